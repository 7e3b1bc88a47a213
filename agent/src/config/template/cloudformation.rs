//! CloudFormation templates, YAML or JSON (CDK's `cdk.out/*.template.json` among them): every
//! `AWS::ECS::TaskDefinition` with a `ProxyConfiguration`, as the task definition ECS
//! registers from it.
//!
//! A value that only a deployed stack knows is left as it is written (`!Ref VirtualNode`)
//! where intercept does not read it (an image, a role), and is an error naming its path and
//! the `--parameter` that gives it where intercept does (the proxy configuration, a
//! container's name, user, dependencies, ports, health check).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::intrinsics::{Resolver, Unresolved, function, render, text};
use super::{Found, NoTaskDefinition};
use crate::config::Diagnostic;

const TASK_DEFINITION: &str = "AWS::ECS::TaskDefinition";

/// The fields of a task definition's `Properties` intercept reads, `*` for any list index.
/// A value at, above or below one of these must be known.
const READ: [&[&str]; 11] = [
    &["ProxyConfiguration"],
    &["NetworkMode"],
    &["RequiresCompatibilities"],
    &["ContainerDefinitions", "*", "Name"],
    &["ContainerDefinitions", "*", "User"],
    &["ContainerDefinitions", "*", "Essential"],
    &["ContainerDefinitions", "*", "DependsOn"],
    &["ContainerDefinitions", "*", "PortMappings"],
    &["ContainerDefinitions", "*", "HealthCheck"],
    &["ContainerDefinitions", "*", "Environment", "*", "Name"],
    &["ContainerDefinitions", "*", "Secrets", "*", "Name"],
];

/// Members whose keys are the user's own (labels, driver options): not renamed.
const USER_KEYS: [&str; 4] = ["DockerLabels", "Options", "DriverOpts", "Labels"];

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render_path(base: &str, path: &[Segment]) -> String {
    let mut out = base.to_owned();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn read_by_intercept(path: &[Segment]) -> bool {
    READ.iter().any(|pattern| {
        pattern.iter().zip(path).all(|(want, got)| match got {
            Segment::Key(key) => key == want,
            Segment::Index(_) => *want == "*",
        })
    })
}

/// Every task definition with a proxy configuration in `template`, in logical-id order.
pub fn task_definitions(
    template: &Map<String, Value>,
    given: &BTreeMap<String, String>,
) -> Result<Vec<Found>, NoTaskDefinition> {
    let resolver = Resolver::new(template, given);
    let mut found = Vec::new();
    let mut without = Vec::new();
    let resources = template.get("Resources").and_then(Value::as_object).into_iter().flatten();
    for (id, resource) in resources.filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(TASK_DEFINITION)) {
        let base = format!("Resources.{id}.Properties");
        let properties = resource.get("Properties");
        if properties.and_then(|p| p.get("ProxyConfiguration")).is_none() {
            without.push(id.clone());
            continue;
        }
        if let Some(condition) = resource.get("Condition").and_then(Value::as_str) {
            match resolver.condition(condition) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(why) => {
                    let field = format!("Resources.{id}.Condition");
                    let problem = unresolved(field, condition, &why, "whether the stack creates it");
                    found.push(Found { name: id.clone(), document: Err(vec![problem]) });
                    continue;
                }
            }
        }
        let mut walk = Walk { resolver: &resolver, base: &base, path: Vec::new(), problems: Vec::new() };
        let resolved = properties.and_then(|p| walk.data(p));
        let document = if !walk.problems.is_empty() {
            Err(walk.problems)
        } else {
            match resolved {
                Some(Value::Object(properties)) if properties.contains_key("ProxyConfiguration") => {
                    Ok(api(Value::Object(properties)))
                }
                // Fn::If made it AWS::NoValue with these parameters: ECS gets no proxy.
                Some(Value::Object(_)) => {
                    without.push(id.clone());
                    continue;
                }
                _ => Err(vec![Diagnostic::error(base, None, "must be an object (the task definition's properties)")]),
            }
        };
        found.push(Found { name: id.clone(), document });
    }
    if found.is_empty() {
        return Err(NoTaskDefinition { kind: TASK_DEFINITION, without });
    }
    Ok(found)
}

fn unresolved(field: String, value: &str, why: &Unresolved, what: &str) -> Diagnostic {
    let remedy = match &why.give {
        Some(name) => format!("give it with --parameter {name}=VALUE"),
        None => "write the value into the template".to_owned(),
    };
    Diagnostic::error(field, Some(value), format!("{what} cannot be known offline: {}; {remedy}", why.why))
}

/// The walk over a task definition's properties, evaluating functions where they are.
struct Walk<'r, 't> {
    resolver: &'r Resolver<'t>,
    base: &'r str,
    path: Vec<Segment>,
    problems: Vec<Diagnostic>,
}

impl Walk<'_, '_> {
    /// The value with its functions evaluated; `None` for `AWS::NoValue`.
    fn data(&mut self, value: &Value) -> Option<Value> {
        if let Some((name, args)) = function(value, false) {
            // A branch is data like any other: only what is unknown inside it matters.
            if name == "Fn::If" {
                return match self.resolver.branch(args) {
                    Ok(Some(branch)) => self.data(branch),
                    Ok(None) => None,
                    Err(why) => self.unknown(&render(name, args), &why),
                };
            }
            return match self.resolver.call(name, args) {
                Ok(resolved) => resolved,
                Err(why) => self.unknown(&render(name, args), &why),
            };
        }
        match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Segment::Index(i));
                    out.extend(self.data(item));
                    self.path.pop();
                }
                Some(Value::Array(out))
            }
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, member) in map {
                    self.path.push(Segment::Key(key.clone()));
                    if let Some(v) = self.data(member) {
                        out.insert(key.clone(), v);
                    }
                    self.path.pop();
                }
                Some(Value::Object(out))
            }
            scalar => Some(scalar.clone()),
        }
    }

    /// An unknown value: an error where intercept reads it, otherwise left as written.
    fn unknown(&mut self, expression: &str, why: &Unresolved) -> Option<Value> {
        if read_by_intercept(&self.path) {
            let field = render_path(self.base, &self.path);
            self.problems.push(unresolved(field, expression, why, "the value"));
        }
        Some(Value::String(expression.to_owned()))
    }
}

/// The task definition as registered: CloudFormation's property names in the API's spelling,
/// and scalars of the type ECS takes, as CloudFormation converts them (`Value: 8080` is the
/// string "8080", `ContainerPort: "8080"` the number 8080).
fn api(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, member)| {
                    let member = if USER_KEYS.contains(&key.as_str()) { member } else { api(member) };
                    let key = api_name(&key);
                    let member = coerce(&key, member);
                    (key, member)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(api).collect()),
        scalar => scalar,
    }
}

fn api_name(key: &str) -> String {
    if key == "ProxyConfigurationProperties" {
        return "properties".to_owned();
    }
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn coerce(key: &str, value: Value) -> Value {
    const STRINGS: [&str; 11] = [
        "name",
        "value",
        "user",
        "containerName",
        "condition",
        "protocol",
        "networkMode",
        "type",
        "image",
        "containerPortRange",
        "valueFrom",
    ];
    const STRING_LISTS: [&str; 2] = ["requiresCompatibilities", "command"];
    let string = |v: Value| match &v {
        Value::Number(_) | Value::Bool(_) => text(&v).map_or(v, Value::String),
        _ => v,
    };
    match (key, value) {
        (k, v) if STRINGS.contains(&k) => string(v),
        (k, Value::Array(items)) if STRING_LISTS.contains(&k) => Value::Array(items.into_iter().map(string).collect()),
        ("containerPort" | "hostPort", Value::String(s)) => {
            s.trim().parse::<u64>().map_or(Value::String(s), Value::from)
        }
        ("essential", Value::String(s)) => match s.as_str() {
            "true" | "false" => Value::Bool(s == "true"),
            _ => Value::String(s),
        },
        (_, v) => v,
    }
}
