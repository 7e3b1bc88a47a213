//! Terraform's JSON: `terraform show -json` of a plan (`planned_values`) or of the state
//! (`values`), and `terraform.tfstate` itself (format 4). Every `aws_ecs_task_definition` with a
//! `proxy_configuration` block, named by its resource address, as the task definition ECS
//! registers from it: `container_definitions` is the containers' JSON as a string, and
//! `proxy_configuration.properties` a map of property names to values.

use serde_json::{Map, Value};

use super::{Found, NoTaskDefinition};
use crate::config::Diagnostic;
use crate::config::source::kind;

const TASK_DEFINITION: &str = "aws_ecs_task_definition";

/// A resource's address and its attributes.
struct Resource<'a> {
    address: String,
    attributes: &'a Map<String, Value>,
}

/// `terraform show -json`: the planned values of a plan, else the values of the state.
pub fn show_json(doc: &Map<String, Value>) -> Result<Vec<Found>, NoTaskDefinition> {
    let root = ["planned_values", "values"].iter().find_map(|k| doc.get(*k)?.get("root_module"));
    let mut resources = Vec::new();
    if let Some(root) = root {
        module(root, &mut resources);
    }
    found(resources)
}

fn module<'a>(module: &'a Value, out: &mut Vec<Resource<'a>>) {
    for resource in module.get("resources").and_then(Value::as_array).into_iter().flatten() {
        let managed = resource.get("mode").and_then(Value::as_str) == Some("managed");
        let of_type = resource.get("type").and_then(Value::as_str) == Some(TASK_DEFINITION);
        if let (true, true, Some(address), Some(attributes)) = (
            managed,
            of_type,
            resource.get("address").and_then(Value::as_str),
            resource.get("values").and_then(Value::as_object),
        ) {
            out.push(Resource { address: address.to_owned(), attributes });
        }
    }
    for child in module.get("child_modules").and_then(Value::as_array).into_iter().flatten() {
        self::module(child, out);
    }
}

/// `terraform.tfstate` (format 4): `resources[].instances[].attributes`.
pub fn state(doc: &Map<String, Value>) -> Result<Vec<Found>, NoTaskDefinition> {
    let mut resources = Vec::new();
    for resource in doc.get("resources").and_then(Value::as_array).into_iter().flatten() {
        let field = |k: &str| resource.get(k).and_then(Value::as_str);
        if field("mode") != Some("managed") || field("type") != Some(TASK_DEFINITION) {
            continue;
        }
        let module = field("module").map(|m| format!("{m}.")).unwrap_or_default();
        let name = field("name").unwrap_or_default();
        for instance in resource.get("instances").and_then(Value::as_array).into_iter().flatten() {
            let index = match instance.get("index_key") {
                Some(Value::Number(n)) => format!("[{n}]"),
                Some(Value::String(s)) => format!("[{}]", Value::String(s.clone())),
                _ => String::new(),
            };
            if let Some(attributes) = instance.get("attributes").and_then(Value::as_object) {
                resources.push(Resource { address: format!("{module}{TASK_DEFINITION}.{name}{index}"), attributes });
            }
        }
    }
    found(resources)
}

fn found(resources: Vec<Resource<'_>>) -> Result<Vec<Found>, NoTaskDefinition> {
    let mut found = Vec::new();
    let mut without = Vec::new();
    for resource in resources {
        match resource.attributes.get("proxy_configuration") {
            Some(Value::Array(blocks)) if !blocks.is_empty() => {
                let document = task_definition(&resource);
                found.push(Found { name: resource.address, document });
            }
            _ => without.push(resource.address),
        }
    }
    if found.is_empty() {
        return Err(NoTaskDefinition { kind: TASK_DEFINITION, without });
    }
    Ok(found)
}

/// The registered form of one `aws_ecs_task_definition`'s attributes.
fn task_definition(resource: &Resource<'_>) -> Result<Value, Vec<Diagnostic>> {
    let at = |name: &str| format!("{}.{name}", resource.address);
    let attributes = resource.attributes;
    let mut problems = Vec::new();
    let mut doc = Map::new();
    match attributes.get("container_definitions") {
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(containers) => {
                doc.insert("containerDefinitions".into(), containers);
            }
            Err(e) => {
                problems.push(Diagnostic::error(at("container_definitions"), None, format!("not valid JSON: {e}")))
            }
        },
        None | Some(Value::Null) => problems.push(Diagnostic::error(
            at("container_definitions"),
            None,
            "not known: a plan leaves it unknown until apply when it depends on resources not yet created; \
             check the state after apply (terraform show -json), or make its inputs known",
        )),
        Some(other) => problems.push(Diagnostic::error(
            at("container_definitions"),
            None,
            format!("must be the containers' JSON as a string, found {}", kind(other)),
        )),
    }
    for (attribute, key) in [("network_mode", "networkMode"), ("requires_compatibilities", "requiresCompatibilities")] {
        if let Some(value) = attributes.get(attribute).filter(|v| !v.is_null()) {
            doc.insert(key.into(), value.clone());
        }
    }
    // One block at most (the provider's schema); its properties are a map.
    let block = attributes.get("proxy_configuration").and_then(|b| b.get(0));
    let mut proxy = Map::new();
    for (attribute, key) in [("type", "type"), ("container_name", "containerName")] {
        if let Some(value) = block.and_then(|b| b.get(attribute)).filter(|v| !v.is_null()) {
            proxy.insert(key.into(), value.clone());
        }
    }
    match block.and_then(|b| b.get("properties")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(properties)) => {
            let list = properties.iter().map(|(name, value)| serde_json::json!({"name": name, "value": value}));
            proxy.insert("properties".into(), Value::Array(list.collect()));
        }
        Some(other) => problems.push(Diagnostic::error(
            at("proxy_configuration[0].properties"),
            None,
            format!("must be a map of property names to values, found {}", kind(other)),
        )),
    }
    doc.insert("proxyConfiguration".into(), Value::Object(proxy));
    if problems.is_empty() { Ok(Value::Object(doc)) } else { Err(problems) }
}
