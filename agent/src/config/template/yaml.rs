//! CloudFormation YAML as the JSON CloudFormation makes of it: short-form tags become the
//! long form (`!Ref X` is `{"Ref": "X"}`, `!Sub s` is `{"Fn::Sub": s}`, `!GetAtt a.b` is
//! `{"Fn::GetAtt": ["a", "b"]}`), plain scalars take their YAML types.
//!
//! The tree is built from the parser's events with intercept's own bounds, so hostile input
//! costs time and memory in proportion to its size: nesting deeper than [`MAX_DEPTH`] is
//! refused, and so are aliases (`*name`), which CloudFormation does not accept either and
//! which would otherwise let a few bytes expand into billions of nodes.

use std::borrow::Cow;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Tag};
use serde_json::{Map, Number, Value};

/// As deep as serde_json lets a JSON document go.
pub const MAX_DEPTH: usize = 128;

/// Why a text is not a YAML document intercept reads, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl YamlError {
    fn at(mark: Marker, message: impl Into<String>) -> Self {
        YamlError { line: mark.line(), column: mark.col() + 1, message: message.into() }
    }
}

/// A container being built: its value, where it started, and for a mapping the key whose
/// value comes next.
struct Open {
    value: Value,
    key: Option<String>,
    tag: Option<Tag>,
    start: Marker,
}

impl Open {
    fn new(value: Value, tag: Option<Cow<'_, Tag>>, start: Marker) -> Self {
        Open { value, key: None, tag: tag.map(Cow::into_owned), start }
    }
}

/// Parses one YAML document into JSON, short-form CloudFormation tags in their long form.
pub fn parse(text: &str) -> Result<Value, YamlError> {
    let mut stack: Vec<Open> = Vec::new();
    let mut documents = 0;
    let mut done: Option<Value> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError::at(*e.marker(), e.info().to_owned()))?;
        let mark = span.start;
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError::at(mark, "a second YAML document: a template is one document"));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(YamlError::at(mark, "an alias (*name): CloudFormation does not accept YAML aliases"));
            }
            Event::Scalar(text, style, _, tag) => match tag {
                // A function's argument is text: `!Ref 8080` names something called "8080".
                Some(tag) if !tag.is_yaml_core_schema() => {
                    tagged(Value::String(text.into_owned()), Some(tag.into_owned()), mark)?
                }
                tag => scalar(&text, style, tag.as_deref(), mark)?,
            },
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                return Err(YamlError::at(mark, format!("nested deeper than {MAX_DEPTH} levels")));
            }
            Event::SequenceStart(_, tag) => {
                stack.push(Open::new(Value::Array(Vec::new()), tag, mark));
                continue;
            }
            Event::MappingStart(_, tag) => {
                stack.push(Open::new(Value::Object(Map::new()), tag, mark));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let open = stack.pop().expect("the parser balances starts and ends");
                tagged(open.value, open.tag, open.start)?
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        match stack.last_mut() {
            None => done = Some(node),
            Some(parent) => add(parent, node, mark)?,
        }
    }
    Ok(done.unwrap_or(Value::Null))
}

fn add(parent: &mut Open, node: Value, mark: Marker) -> Result<(), YamlError> {
    match &mut parent.value {
        Value::Array(items) => items.push(node),
        Value::Object(map) => match parent.key.take() {
            None => {
                let key = match node {
                    Value::String(s) => s,
                    Value::Number(_) | Value::Bool(_) | Value::Null => node.to_string(),
                    _ => return Err(YamlError::at(mark, "a mapping key must be a scalar")),
                };
                if map.contains_key(&key) {
                    return Err(YamlError::at(mark, format!("the key \"{key}\" appears twice in one mapping")));
                }
                parent.key = Some(key);
            }
            Some(key) => {
                map.insert(key, node);
            }
        },
        _ => unreachable!("only sequences and mappings are opened"),
    }
    Ok(())
}

/// A scalar's value: quoted and block scalars are strings, plain ones take the YAML type
/// their text has (null, boolean, integer, float), as CloudFormation reads them.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>, mark: Marker) -> Result<Value, YamlError> {
    if let Some(tag) = tag.filter(|t| t.is_yaml_core_schema()) {
        let value = match tag.suffix.as_str() {
            "str" => Some(Value::String(text.to_owned())),
            "null" | "bool" | "int" | "float" => Some(plain(text)).filter(|v| !v.is_string()),
            _ => None,
        };
        return value
            .ok_or_else(|| YamlError::at(mark, format!("!!{} {text:?}: not a value of that type", tag.suffix)));
    }
    Ok(if style == ScalarStyle::Plain { plain(text) } else { Value::String(text.to_owned()) })
}

fn plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let number = if digits.starts_with(|c: char| c.is_ascii_digit()) && digits.chars().all(|c| c.is_ascii_digit()) {
        text.parse::<i64>().ok().map(Number::from)
    } else if digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits.chars().all(|c| c.is_ascii_digit() || ".eE+-".contains(c))
    {
        text.parse::<f64>().ok().and_then(Number::from_f64)
    } else {
        None
    };
    number.map_or_else(|| Value::String(text.to_owned()), Value::Number)
}

/// The long form of a node carrying a CloudFormation short-form tag.
fn tagged(value: Value, tag: Option<Tag>, mark: Marker) -> Result<Value, YamlError> {
    let Some(tag) = tag else { return Ok(value) };
    if tag.is_yaml_core_schema() {
        return match (tag.suffix.as_str(), &value) {
            ("seq", Value::Array(_)) | ("map", Value::Object(_)) => Ok(value),
            _ => Err(YamlError::at(mark, format!("!!{}: not a tag CloudFormation templates use", tag.suffix))),
        };
    }
    if tag.handle != "!" {
        return Err(YamlError::at(
            mark,
            format!("the tag {}{} is not a CloudFormation function", tag.handle, tag.suffix),
        ));
    }
    let function = tag.suffix.as_str();
    let key = match function {
        "Ref" | "Condition" => function.to_owned(),
        "GetAtt" => {
            return Ok(match value {
                // `!GetAtt Resource.Attribute`: the attribute may itself contain dots.
                Value::String(s) => match s.split_once('.') {
                    Some((resource, attribute)) => single("Fn::GetAtt", Value::from(vec![resource, attribute])),
                    None => single("Fn::GetAtt", Value::String(s)),
                },
                other => single("Fn::GetAtt", other),
            });
        }
        "And" | "Base64" | "Cidr" | "Equals" | "FindInMap" | "GetAZs" | "If" | "ImportValue" | "Join" | "Length"
        | "Not" | "Or" | "Select" | "Split" | "Sub" | "ToJsonString" | "Transform" => format!("Fn::{function}"),
        _ => return Err(YamlError::at(mark, format!("!{function} is not a CloudFormation function"))),
    };
    Ok(single(&key, value))
}

fn single(key: &str, value: Value) -> Value {
    Value::Object(Map::from_iter([(key.to_owned(), value)]))
}
