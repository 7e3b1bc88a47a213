use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::intrinsics::Resolver;
use super::yaml::{self, MAX_DEPTH};
use super::*;
use crate::config::{ConfigErrors, Entry};
use crate::report::CheckReport;
use crate::testdata::config_args;

const TEMPLATES: &str = "../examples/templates";

fn entries(file: &str, extra: &[&str]) -> Result<Vec<Entry>, ConfigErrors> {
    let path = format!("{TEMPLATES}/{file}");
    let mut argv = vec!["--task-definition", path.as_str()];
    argv.extend(extra);
    config_args(&argv).read_all_with(|_| None, &b""[..])
}

/// `intercept check`'s text for a template in `examples/templates/`.
fn report(file: &str, extra: &[&str]) -> String {
    CheckReport::render_all_text(&CheckReport::check_all(entries(file, extra), false))
}

fn exit_code(file: &str, extra: &[&str]) -> i32 {
    CheckReport::worst_exit_code(&CheckReport::check_all(entries(file, extra), false))
}

// --- the fixtures, one report per task definition ---

#[test]
fn cloudformation_yaml_reports_each_task_definition_by_logical_id() {
    insta::assert_snapshot!("cloudformation_yaml", report("cloudformation.yaml", &[]));
    // The import intercept reads cannot be known offline: an error until --parameter gives it.
    assert_eq!(exit_code("cloudformation.yaml", &[]), 2);
    let given = ["--parameter", "shared-database-cidr=10.20.0.0/16", "--parameter", "EnableXRay=false"];
    insta::assert_snapshot!("cloudformation_yaml_with_parameters", report("cloudformation.yaml", &given));
    assert_eq!(exit_code("cloudformation.yaml", &given), 0);
}

#[test]
fn several_reports_are_a_json_array_and_one_is_itself() {
    let reports = CheckReport::check_all(entries("cloudformation.yaml", &[]), false);
    let json: Value = serde_json::from_str(&CheckReport::render_all_json(&reports)).unwrap();
    let sources: Vec<&str> = json.as_array().unwrap().iter().filter_map(|r| r["source"].as_str()).collect();
    assert_eq!(
        sources,
        [
            "task definition Color in ../examples/templates/cloudformation.yaml",
            "task definition Front in ../examples/templates/cloudformation.yaml"
        ]
    );
    let one = CheckReport::check_all(entries("cloudformation.yaml", &["--resource", "Front"]), false);
    assert_eq!(CheckReport::render_all_json(&one), one[0].render_json());
}

#[test]
fn cloudformation_json_reads_as_the_same_template_in_yaml() {
    let yaml = report("cloudformation.yaml", &[]).replace("cloudformation.yaml", "cloudformation.json");
    assert_eq!(report("cloudformation.json", &[]), yaml);
}

#[test]
fn cdk_synthesized_template() {
    insta::assert_snapshot!("cdk_template", report("cdk.template.json", &[]));
}

#[test]
fn terraform_plan_and_state() {
    insta::assert_snapshot!("terraform_plan", report("terraform-plan.json", &[]));
    insta::assert_snapshot!("terraform_state", report("terraform.tfstate", &[]));
}

#[test]
fn resource_picks_one_task_definition() {
    let picked = entries("terraform.tfstate", &["--resource", "module.color.aws_ecs_task_definition.this[\"blue\"]"]);
    let names: Vec<String> = picked.unwrap().iter().map(|e| e.source.to_string()).collect();
    assert_eq!(
        names,
        [
            "task definition module.color.aws_ecs_task_definition.this[\"blue\"] in ../examples/templates/terraform.tfstate"
        ]
    );
    let none = entries("cloudformation.yaml", &["--resource", "Colour"]).unwrap_err();
    assert_eq!(
        none.0[0].to_string(),
        "error: --resource = \"Colour\": names no task definition with a proxy configuration in \
         ../examples/templates/cloudformation.yaml (there are: Color, Front)"
    );
    // One configuration for apply and plan: several need --resource.
    let path = format!("{TEMPLATES}/cloudformation.yaml");
    let several = config_args(&["--task-definition", &path]).read_with(|_| None, &b""[..]).unwrap_err();
    assert!(several.to_string().contains("holds 2 task definitions with a proxy configuration"), "{several}");
    let one = config_args(&["--task-definition", &path, "--resource", "Front"]).read_with(|_| None, &b""[..]);
    assert!(one.is_ok(), "{one:?}");
}

#[test]
fn parameter_and_resource_flags_are_checked() {
    let errors = entries("cloudformation.yaml", &["--parameter", "NoEquals", "--parameter", "=x"]).unwrap_err();
    assert_eq!(errors.errors().count(), 2, "{errors}");
    assert!(errors.to_string().contains("--parameter = \"NoEquals\": must be NAME=VALUE"), "{errors}");
    let errors = entries("terraform.tfstate", &["--parameter", "A=b"]).unwrap_err();
    assert!(errors.to_string().contains("applies to CloudFormation templates"), "{errors}");
    let plain = config_args(&["--task-definition", "../examples/ec2-taskB.json", "--resource", "x"]);
    let errors = plain.read_all_with(|_| None, &b""[..]).unwrap_err();
    assert!(errors.to_string().contains("applies to templates"), "{errors}");
}

// --- telling the forms apart ---

fn refusal(text: &str) -> String {
    match read(text, &BTreeMap::new()) {
        Err(e) => e.to_string(),
        Ok(form) => panic!("read as {form:?}"),
    }
}

#[test]
fn other_forms_are_refused_saying_which_are_read() {
    let hcl = "resource \"aws_ecs_task_definition\" \"app\" {\n  family = \"app\"\n}\n";
    let jq = "{\n  \"family\": $NAME,\n  \"proxyConfiguration\": {}\n}\n";
    let copilot = "name: front\ntype: Load Balanced Web Service\n";
    for (text, start) in [
        (hcl, "neither JSON nor"),
        (jq, "not valid JSON: expected value at line 2 column 13"),
        (copilot, "neither JSON nor a CloudFormation template (no Resources section)"),
    ] {
        let message = refusal(text);
        assert!(message.starts_with(start), "{message}");
        for remedy in ["terraform show -json", "cdk synth", "aws ecs describe-task-definition"] {
            assert!(message.contains(remedy), "{message}");
        }
    }
}

#[test]
fn a_template_without_a_meshed_task_definition_says_so() {
    let text = "Resources:\n  Batch:\n    Type: AWS::ECS::TaskDefinition\n    Properties:\n      Family: batch\n";
    let Ok(Form::Template(kind, Err(none))) = read(text, &BTreeMap::new()) else { panic!() };
    assert_eq!(
        format!("{kind} {}", none.message()),
        "CloudFormation template holds no AWS::ECS::TaskDefinition with a proxy configuration, so there is nothing \
         to check (without one: Batch)"
    );
}

#[test]
fn a_plan_that_leaves_container_definitions_unknown() {
    let plan = json!({"format_version": "1.2", "planned_values": {"root_module": {"resources": [{
        "address": "aws_ecs_task_definition.app", "mode": "managed", "type": "aws_ecs_task_definition",
        "values": {"proxy_configuration": [{"type": "APPMESH", "container_name": "envoy",
                   "properties": {"IgnoredUID": "1337", "ProxyEgressPort": "15001"}}]}
    }]}}});
    let Ok(Form::Template(_, Ok(found))) = read(&plan.to_string(), &BTreeMap::new()) else { panic!() };
    let problems = found[0].document.clone().unwrap_err();
    assert_eq!(problems[0].field, "aws_ecs_task_definition.app.container_definitions");
    assert!(problems[0].message.starts_with("not known: a plan leaves it unknown until apply"), "{}", problems[0]);
}

// --- YAML ---

#[test]
fn yaml_short_forms_are_cloudformation_long_forms() {
    let cases = [
        ("!Ref Port", json!({"Ref": "Port"})),
        ("!GetAtt Db.Endpoint.Port", json!({"Fn::GetAtt": ["Db", "Endpoint.Port"]})),
        ("!GetAtt [Db, Arn]", json!({"Fn::GetAtt": ["Db", "Arn"]})),
        ("!Sub '${A}-x'", json!({"Fn::Sub": "${A}-x"})),
        ("!If [C, 1, !Ref AWS::NoValue]", json!({"Fn::If": ["C", 1, {"Ref": "AWS::NoValue"}]})),
        ("!Not [!Condition C]", json!({"Fn::Not": [{"Condition": "C"}]})),
        (
            "[8080, '8080', 1.5, true, ~, 2010-09-09, !!str 1]",
            json!([8080, "8080", 1.5, true, null, "2010-09-09", "1"]),
        ),
        ("a: |\n  two\n  lines\n", json!({"a": "two\nlines\n"})),
    ];
    for (text, want) in cases {
        assert_eq!(yaml::parse(text), Ok(want), "{text}");
    }
}

#[test]
fn yaml_that_is_refused() {
    let deep = format!("{}1{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    let cases = [
        ("a: &x 1\nb: *x\n", "line 2, column 4: an alias (*name): CloudFormation does not accept YAML aliases"),
        ("a: 1\na: 2\n", "line 2, column 1: the key \"a\" appears twice in one mapping"),
        ("!Reference x", "line 1, column 1: !Reference is not a CloudFormation function"),
        ("a: 1\n---\nb: 2\n", "line 2, column 1: a second YAML document: a template is one document"),
        ("!!binary aGk=", "line 1, column 1: !!binary \"aGk=\": not a value of that type"),
        (deep.as_str(), "line 1, column 129: nested deeper than 128 levels"),
    ];
    for (text, want) in cases {
        assert_eq!(yaml::parse(text).map_err(|e| e.to_string()), Err(want.to_owned()), "{text}");
    }
}

/// Hostile documents of intercept's whole input limit (1 MiB) are refused, never expanded.
#[test]
fn hostile_yaml_is_refused() {
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let padding = "# ".to_owned() + &"lol".repeat((1 << 20) / 3 - laughs.len());
    let laughs = format!("{padding}\n{laughs}");
    let nested = format!("{}1", "- ".repeat((1 << 20) / 2 - 1));
    let flow = "{a: ".repeat((1 << 20) / 4);
    for text in [laughs.as_str(), nested.as_str(), flow.as_str()] {
        assert!(text.len() <= 1 << 20);
        assert!(yaml::parse(text).is_err());
        assert!(read(text, &BTreeMap::new()).is_err());
    }
}

// --- intrinsic functions ---

fn template() -> Value {
    json!({
        "Parameters": {
            "Port": {"Type": "Number", "Default": 8080},
            "Ports": {"Type": "CommaDelimitedList", "Default": "80, 443"},
            "Stage": {"Type": "String", "Default": "prod"},
            "Secret": {"Type": "String"},
            "Version": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/cdk/version"}
        },
        "Mappings": {"Ports": {"prod": {"Egress": 15001}}},
        "Conditions": {
            "Prod": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]},
            "NotProd": {"Fn::Not": [{"Condition": "Prod"}]},
            "Both": {"Fn::And": [{"Condition": "Prod"}, {"Condition": "NotProd"}]},
            "Either": {"Fn::Or": [{"Condition": "Prod"}, {"Condition": "NotProd"}]},
            "Loop": {"Fn::Not": [{"Condition": "Loop"}]},
            "Unknown": {"Fn::Equals": [{"Ref": "Secret"}, "x"]}
        },
        "Resources": {"Node": {"Type": "AWS::AppMesh::VirtualNode"}}
    })
}

#[test]
fn functions_evaluate_what_the_template_decides() {
    let template = template();
    let given = BTreeMap::from([("Stage".to_owned(), "dev".to_owned()), ("Node.Arn".to_owned(), "arn:n".to_owned())]);
    let none = BTreeMap::new();
    let cases: [(&BTreeMap<String, String>, Value, Option<Value>); 14] = [
        (&none, json!({"Ref": "Port"}), Some(json!("8080"))),
        (&none, json!({"Ref": "Ports"}), Some(json!(["80", "443"]))),
        (&none, json!({"Fn::Sub": "${Stage}-${!Literal}-${Port}"}), Some(json!("prod-${Literal}-8080"))),
        (&none, json!({"Fn::Sub": ["${A}:${B}", {"A": {"Ref": "Stage"}, "B": 1}]}), Some(json!("prod:1"))),
        (&given, json!({"Fn::Sub": "${Stage}/${Node.Arn}"}), Some(json!("dev/arn:n"))),
        (&none, json!({"Fn::Join": [",", [1, {"Ref": "Stage"}]]}), Some(json!("1,prod"))),
        (&none, json!({"Fn::Select": ["1", {"Ref": "Ports"}]}), Some(json!("443"))),
        (&none, json!({"Fn::Split": ["-", "a-b"]}), Some(json!(["a", "b"]))),
        (&none, json!({"Fn::FindInMap": ["Ports", {"Ref": "Stage"}, "Egress"]}), Some(json!(15001))),
        (&none, json!({"Fn::FindInMap": ["Ports", "dev", "Egress", {"DefaultValue": 1}]}), Some(json!(1))),
        (&none, json!({"Fn::If": ["Prod", "p", "d"]}), Some(json!("p"))),
        (&given, json!({"Fn::If": ["Prod", "p", "d"]}), Some(json!("d"))),
        (&none, json!({"Fn::If": ["NotProd", "p", {"Ref": "AWS::NoValue"}]}), None),
        (
            &none,
            json!([{"Ref": "AWS::NoValue"}, {"Fn::If": ["Either", {"Fn::If": ["Both", 1, 2]}, 3]}]),
            Some(json!([2])),
        ),
    ];
    for (given, expression, want) in cases {
        let resolver = Resolver::new(template.as_object().unwrap(), given);
        assert_eq!(resolver.value(&expression), Ok(want), "{expression}");
    }
}

#[test]
fn a_long_chain_of_conditions_is_refused_not_recursed_into() {
    let mut conditions = serde_json::Map::new();
    for i in 0..10_000 {
        conditions.insert(format!("C{i}"), json!({"Fn::Not": [{"Condition": format!("C{}", i + 1)}]}));
    }
    conditions.insert("C10000".into(), json!(true));
    let template = json!({"Conditions": conditions});
    let none = BTreeMap::new();
    let resolver = Resolver::new(template.as_object().unwrap(), &none);
    let unresolved = resolver.condition("C0").unwrap_err();
    assert!(unresolved.why.ends_with("is nested more than 128 conditions deep"), "{unresolved:?}");
    // A short chain is evaluated.
    assert_eq!(resolver.condition("C9990"), Ok(true));
}

#[test]
fn what_only_a_deployed_stack_knows_is_unresolved_and_named() {
    let template = template();
    let none = BTreeMap::new();
    let resolver = Resolver::new(template.as_object().unwrap(), &none);
    let cases = [
        (json!({"Ref": "Secret"}), "parameter Secret has no Default", Some("Secret")),
        (json!({"Ref": "Version"}), "parameter Version is read from the SSM parameter store", Some("Version")),
        (json!({"Ref": "AWS::Region"}), "AWS::Region is known only when the stack is deployed", Some("AWS::Region")),
        (json!({"Ref": "Node"}), "the Ref of resource Node is known only once the stack creates it", Some("Node")),
        (json!({"Ref": "Nope"}), "Nope names no parameter or resource of the template", None),
        (json!({"Fn::GetAtt": "Node.Arn"}), "Node.Arn is an attribute of a resource", Some("Node.Arn")),
        (
            json!({"Fn::ImportValue": {"Fn::Sub": "${Stage}-cidr"}}),
            "an export of another stack (prod-cidr)",
            Some("prod-cidr"),
        ),
        (json!({"Fn::Sub": "${AWS::AccountId}"}), "AWS::AccountId is known only", Some("AWS::AccountId")),
        (json!({"Fn::If": ["Unknown", 1, 2]}), "parameter Secret has no Default", Some("Secret")),
        (json!({"Fn::If": ["Loop", 1, 2]}), "condition Loop refers to itself", None),
        (json!({"Fn::Base64": "x"}), "intercept does not evaluate Fn::Base64", None),
        (json!({"Fn::Join": ","}), "Fn::Join takes [delimiter, [values]]", None),
        (json!({"Fn::Select": [5, [1]]}), "Fn::Select: index 5 is not in a list of 1", None),
    ];
    for (expression, why, give) in cases {
        let unresolved = resolver.value(&expression).unwrap_err();
        assert!(unresolved.why.starts_with(why), "{expression}: {unresolved:?}");
        assert_eq!(unresolved.give.as_deref(), give, "{expression}");
    }
}

#[test]
fn unknown_values_are_errors_only_where_intercept_reads_them() {
    let text = r#"
Resources:
  App:
    Type: AWS::ECS::TaskDefinition
    Properties:
      ExecutionRoleArn: !GetAtt Role.Arn
      ProxyConfiguration:
        Type: APPMESH
        ContainerName: envoy
        ProxyConfigurationProperties:
          - {Name: IgnoredUID, Value: !Ref Uid}
          - {Name: ProxyEgressPort, Value: 15001}
      ContainerDefinitions:
        - Name: envoy
          Image: !Ref AWS::AccountId
          User: !Ref Uid
          Environment: [{Name: APPMESH_RESOURCE_ARN, Value: !Ref Node}]
  Role: {Type: AWS::IAM::Role}
  Node: {Type: AWS::AppMesh::VirtualNode}
Parameters:
  Uid: {Type: String}
"#;
    let Ok(Form::Template(_, Ok(found))) = read(text, &BTreeMap::new()) else { panic!() };
    let problems: Vec<String> = found[0].document.clone().unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "error: Resources.App.Properties.ContainerDefinitions[0].User = \"!Ref Uid\": the value cannot be known \
             offline: parameter Uid has no Default; give it with --parameter Uid=VALUE",
            "error: Resources.App.Properties.ProxyConfiguration.ProxyConfigurationProperties[0].Value = \"!Ref Uid\": \
             the value cannot be known offline: parameter Uid has no Default; give it with --parameter Uid=VALUE",
        ]
    );
    let given = BTreeMap::from([("Uid".to_owned(), "1337".to_owned())]);
    let Ok(Form::Template(_, Ok(found))) = read(text, &given) else { panic!() };
    // In the registered form, typed as ECS takes it; what is not read stays as written.
    assert_eq!(
        found[0].document,
        Ok(json!({
            "executionRoleArn": "!GetAtt Role.Arn",
            "proxyConfiguration": {"type": "APPMESH", "containerName": "envoy", "properties": [
                {"name": "IgnoredUID", "value": "1337"}, {"name": "ProxyEgressPort", "value": "15001"}]},
            "containerDefinitions": [{"name": "envoy", "image": "!Ref AWS::AccountId", "user": "1337",
                "environment": [{"name": "APPMESH_RESOURCE_ARN", "value": "!Ref Node"}]}]
        }))
    );
}
