resource "aws_ecs_task_definition" "app" {
  family = "app"
  proxy_configuration {
    type           = "APPMESH"
    container_name = "envoy"
    properties = {
      IgnoredUID      = "1337"
      ProxyEgressPort = 15001
    }
  }
}
