//! CloudFormation's intrinsic functions, evaluated where the template alone decides the
//! value: parameters (their defaults, or `--parameter`), `Mappings`, `Conditions`, `Fn::Sub`,
//! `Fn::Join`, `Fn::Select`, `Fn::Split`, `Fn::If`, `Fn::FindInMap`. What only a deployed
//! stack knows (a resource's `Ref` or attribute, a pseudo parameter, another stack's export) is
//! [`Unresolved`] unless `--parameter` gives it: it is never guessed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Why a value cannot be known offline, and the `--parameter` name that would give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub why: String,
    pub give: Option<String>,
}

impl Unresolved {
    fn new(why: impl Into<String>, give: Option<&str>) -> Self {
        Unresolved { why: why.into(), give: give.map(str::to_owned) }
    }

    fn malformed(function: &str, takes: &str) -> Self {
        Unresolved::new(format!("{function} takes {takes}"), None)
    }
}

/// `Ok(None)` is `AWS::NoValue`: the member or item is left out.
pub type Resolved = Result<Option<Value>, Unresolved>;

/// The name of a single-key object that calls a function, and its arguments. `Condition` is a
/// function only in conditions: elsewhere it is an ordinary key (a `dependsOn` entry's).
pub fn function(value: &Value, in_condition: bool) -> Option<(&str, &Value)> {
    let Value::Object(map) = value else { return None };
    let (key, args) = map.iter().next().filter(|_| map.len() == 1)?;
    (key == "Ref" || key.starts_with("Fn::") || (in_condition && key == "Condition")).then_some((key.as_str(), args))
}

/// A function call as the template's author would recognise it: `!Ref AppPort`.
pub fn render(function: &str, args: &Value) -> String {
    let short = function.strip_prefix("Fn::").unwrap_or(function);
    match args {
        Value::String(s) => format!("!{short} {s}"),
        Value::Array(items) if function == "Fn::GetAtt" && items.iter().all(Value::is_string) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            format!("!GetAtt {}", parts.join("."))
        }
        other => format!("!{short} {other}"),
    }
}

/// A scalar as CloudFormation turns it into a string.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub struct Resolver<'t> {
    /// The template's sections (`null` when absent: every lookup in it finds nothing).
    parameters: &'t Value,
    mappings: &'t Value,
    conditions: &'t Value,
    resources: &'t Value,
    /// `--parameter NAME=VALUE`: a parameter, a pseudo parameter, a resource's `Ref`, a
    /// `Resource.Attribute` or an export name.
    given: &'t BTreeMap<String, String>,
    /// Conditions evaluated so far; `None` while one is being evaluated (a cycle).
    evaluated: RefCell<BTreeMap<String, Option<Result<bool, Unresolved>>>>,
    /// How many conditions are being evaluated, one inside the other.
    nesting: Cell<usize>,
}

/// Conditions may refer to conditions; a template of thousands in a chain would otherwise
/// take as deep a recursion.
const MAX_CONDITION_NESTING: usize = 128;

fn section<'t>(template: &'t Map<String, Value>, name: &str) -> &'t Value {
    static ABSENT: Value = Value::Null;
    template.get(name).unwrap_or(&ABSENT)
}

impl<'t> Resolver<'t> {
    pub fn new(template: &'t Map<String, Value>, given: &'t BTreeMap<String, String>) -> Self {
        Resolver {
            parameters: section(template, "Parameters"),
            mappings: section(template, "Mappings"),
            conditions: section(template, "Conditions"),
            resources: section(template, "Resources"),
            given,
            evaluated: RefCell::new(BTreeMap::new()),
            nesting: Cell::new(0),
        }
    }

    /// A value with every function in it evaluated.
    pub fn value(&self, value: &Value) -> Resolved {
        if let Some((function, args)) = function(value, false) {
            return self.call(function, args);
        }
        Ok(Some(match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.extend(self.value(item)?);
                }
                Value::Array(out)
            }
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, member) in map {
                    if let Some(v) = self.value(member)? {
                        out.insert(key.clone(), v);
                    }
                }
                Value::Object(out)
            }
            scalar => scalar.clone(),
        }))
    }

    fn string(&self, value: &Value, function: &str) -> Result<String, Unresolved> {
        let resolved = self.value(value)?.unwrap_or(Value::Null);
        text(&resolved).ok_or_else(|| Unresolved::new(format!("{function} needs a string here, not {resolved}"), None))
    }

    fn list(&self, value: &Value, function: &str) -> Result<Vec<Value>, Unresolved> {
        match self.value(value)? {
            Some(Value::Array(items)) => Ok(items),
            other => Err(Unresolved::new(
                format!("{function} needs a list here, not {}", other.unwrap_or(Value::Null)),
                None,
            )),
        }
    }

    pub fn call(&self, function: &str, args: &Value) -> Resolved {
        let items = args.as_array().map(Vec::as_slice).unwrap_or_default();
        match function {
            "Ref" => match args.as_str() {
                Some(name) => self.reference(name),
                None => Err(Unresolved::malformed("Ref", "a name")),
            },
            "Fn::Sub" => self.sub(args).map(|s| Some(Value::String(s))),
            "Fn::GetAtt" => self.get_att(args).map(Some),
            "Fn::Join" => match items {
                [delimiter, values] => {
                    let delimiter = self.string(delimiter, function)?;
                    let parts: Result<Vec<String>, Unresolved> =
                        self.list(values, function)?.iter().map(|v| self.string(v, function)).collect();
                    Ok(Some(Value::String(parts?.join(&delimiter))))
                }
                _ => Err(Unresolved::malformed(function, "[delimiter, [values]]")),
            },
            "Fn::Select" => match items {
                [index, values] => {
                    let index = self.string(index, function)?;
                    let values = self.list(values, function)?;
                    let picked = index.parse::<usize>().ok().and_then(|i| values.get(i).cloned());
                    picked.map(Some).ok_or_else(|| {
                        Unresolved::new(format!("Fn::Select: index {index} is not in a list of {}", values.len()), None)
                    })
                }
                _ => Err(Unresolved::malformed(function, "[index, [values]]")),
            },
            "Fn::Split" => match items {
                [delimiter, source] => {
                    let delimiter = self.string(delimiter, function)?;
                    let source = self.string(source, function)?;
                    if delimiter.is_empty() {
                        return Err(Unresolved::malformed(function, "a non-empty delimiter"));
                    }
                    Ok(Some(Value::from(source.split(delimiter.as_str()).collect::<Vec<_>>())))
                }
                _ => Err(Unresolved::malformed(function, "[delimiter, string]")),
            },
            "Fn::If" => match self.branch(args)? {
                Some(branch) => self.value(branch),
                None => Ok(None),
            },
            "Fn::FindInMap" => self.find_in_map(items).map(Some),
            "Fn::ImportValue" => {
                let name = self.string(args, function)?;
                match self.given.get(&name) {
                    Some(value) => Ok(Some(Value::String(value.clone()))),
                    None => Err(Unresolved::new(format!("an export of another stack ({name})"), Some(&name))),
                }
            }
            other => Err(Unresolved::new(format!("intercept does not evaluate {other}"), None)),
        }
    }

    /// The branch of an `Fn::If` its condition picks; `None` when that is `AWS::NoValue`.
    pub fn branch<'a>(&self, args: &'a Value) -> Result<Option<&'a Value>, Unresolved> {
        let items = args.as_array().map(Vec::as_slice).unwrap_or_default();
        let [condition, then, otherwise] = items else {
            return Err(Unresolved::malformed("Fn::If", "[condition name, value if true, value if false]"));
        };
        let Some(name) = condition.as_str() else {
            return Err(Unresolved::malformed("Fn::If", "a condition name first"));
        };
        let chosen = if self.condition(name)? { then } else { otherwise };
        let no_value = matches!(function(chosen, false), Some(("Ref", Value::String(n))) if n == "AWS::NoValue");
        Ok((!no_value).then_some(chosen))
    }

    fn reference(&self, name: &str) -> Resolved {
        if name == "AWS::NoValue" {
            return Ok(None);
        }
        if let Some(value) = self.given.get(name) {
            return Ok(Some(self.typed(name, value)));
        }
        if let Some(parameter) = self.parameters.get(name) {
            let kind = parameter.get("Type").and_then(Value::as_str).unwrap_or("String");
            return match parameter.get("Default").and_then(text) {
                Some(_) if kind.starts_with("AWS::SSM::Parameter::Value<") => Err(Unresolved::new(
                    format!("parameter {name} is read from the SSM parameter store when the stack is deployed"),
                    Some(name),
                )),
                Some(default) => Ok(Some(self.typed(name, &default))),
                None => Err(Unresolved::new(format!("parameter {name} has no Default"), Some(name))),
            };
        }
        if name.starts_with("AWS::") {
            return Err(Unresolved::new(format!("{name} is known only when the stack is deployed"), Some(name)));
        }
        if self.resources.get(name).is_some() {
            return Err(Unresolved::new(
                format!("the Ref of resource {name} is known only once the stack creates it"),
                Some(name),
            ));
        }
        Err(Unresolved::new(format!("{name} names no parameter or resource of the template"), None))
    }

    /// A parameter's value as `Ref` gives it: a list for the list types, else a string.
    fn typed(&self, name: &str, value: &str) -> Value {
        let kind = self.parameters.get(name).and_then(|p| p.get("Type")).and_then(Value::as_str).unwrap_or("");
        if kind == "CommaDelimitedList" || kind.starts_with("List<") {
            Value::from(value.split(',').map(str::trim).collect::<Vec<_>>())
        } else {
            Value::String(value.to_owned())
        }
    }

    fn get_att(&self, args: &Value) -> Result<Value, Unresolved> {
        let name = match args {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.len() == 2 => {
                let resource = self.string(&items[0], "Fn::GetAtt")?;
                format!("{resource}.{}", self.string(&items[1], "Fn::GetAtt")?)
            }
            _ => return Err(Unresolved::malformed("Fn::GetAtt", "[resource, attribute]")),
        };
        match self.given.get(&name) {
            Some(value) => Ok(Value::String(value.clone())),
            None => Err(Unresolved::new(
                format!("{name} is an attribute of a resource, known only once the stack creates it"),
                Some(&name),
            )),
        }
    }

    fn sub(&self, args: &Value) -> Result<String, Unresolved> {
        let (template, variables) = match args {
            Value::String(s) => (s.as_str(), None),
            Value::Array(items) => match items.as_slice() {
                [Value::String(s), Value::Object(vars)] => (s.as_str(), Some(vars)),
                _ => return Err(Unresolved::malformed("Fn::Sub", "a string, or [string, {variables}]")),
            },
            _ => return Err(Unresolved::malformed("Fn::Sub", "a string, or [string, {variables}]")),
        };
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str(&format!("${{{literal}}}"));
            } else {
                let value = match variables.and_then(|vars| vars.get(name)) {
                    Some(value) => self.string(value, "Fn::Sub")?,
                    None => match name.split_once('.') {
                        Some(_) => text(&self.get_att(&Value::String(name.to_owned()))?).unwrap_or_default(),
                        None => self.string(&Value::from_iter([("Ref".to_owned(), Value::from(name))]), "Fn::Sub")?,
                    },
                };
                out.push_str(&value);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn find_in_map(&self, items: &[Value]) -> Result<Value, Unresolved> {
        let (keys, default) = match items {
            [map, top, second] => ([map, top, second], None),
            [map, top, second, Value::Object(options)] => ([map, top, second], options.get("DefaultValue")),
            _ => return Err(Unresolved::malformed("Fn::FindInMap", "[map, top-level key, second-level key]")),
        };
        let [map, top, second] = keys.map(|k| self.string(k, "Fn::FindInMap"));
        let (map, top, second) = (map?, top?, second?);
        let found = self.mappings.get(&map).and_then(|m| m.get(&top)).and_then(|m| m.get(&second));
        match (found, default) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(default)) => Ok(self.value(default)?.unwrap_or(Value::Null)),
            (None, None) => Err(Unresolved::new(format!("Mappings has no {map} → {top} → {second}"), None)),
        }
    }

    /// A named condition of the `Conditions` section.
    pub fn condition(&self, name: &str) -> Result<bool, Unresolved> {
        if let Some(known) = self.evaluated.borrow().get(name) {
            return known
                .clone()
                .unwrap_or_else(|| Err(Unresolved::new(format!("condition {name} refers to itself"), None)));
        }
        let Some(definition) = self.conditions.get(name) else {
            return Err(Unresolved::new(format!("{name} names no condition of the template"), None));
        };
        if self.nesting.get() >= MAX_CONDITION_NESTING {
            return Err(Unresolved::new(
                format!("condition {name} is nested more than {MAX_CONDITION_NESTING} conditions deep"),
                None,
            ));
        }
        self.evaluated.borrow_mut().insert(name.to_owned(), None);
        self.nesting.set(self.nesting.get() + 1);
        let result = self.truth(definition);
        self.nesting.set(self.nesting.get() - 1);
        self.evaluated.borrow_mut().insert(name.to_owned(), Some(result.clone()));
        result
    }

    fn truth(&self, value: &Value) -> Result<bool, Unresolved> {
        let Some((function, args)) = function(value, true) else {
            return match value {
                Value::Bool(b) => Ok(*b),
                Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
                other => Err(Unresolved::new(format!("a condition must be true or false, not {other}"), None)),
            };
        };
        let items = args.as_array().map(Vec::as_slice).unwrap_or_default();
        match function {
            "Condition" => match args.as_str() {
                Some(name) => self.condition(name),
                None => Err(Unresolved::malformed("Condition", "a condition name")),
            },
            "Fn::Equals" => match items {
                [a, b] => {
                    // Scalars compare as the strings CloudFormation makes of them.
                    let comparable = |v: Option<Value>| v.as_ref().and_then(text).map(Value::String).or(v);
                    Ok(comparable(self.value(a)?) == comparable(self.value(b)?))
                }
                _ => Err(Unresolved::malformed(function, "[value, value]")),
            },
            "Fn::Not" => match items {
                [condition] => Ok(!self.truth(condition)?),
                _ => Err(Unresolved::malformed(function, "[condition]")),
            },
            "Fn::And" | "Fn::Or" => {
                let mut results = Vec::with_capacity(items.len());
                for item in items {
                    results.push(self.truth(item)?);
                }
                Ok(if function == "Fn::And" { results.iter().all(|r| *r) } else { results.iter().any(|r| *r) })
            }
            _ => self.truth(&self.value(value)?.unwrap_or(Value::Null)),
        }
    }
}
