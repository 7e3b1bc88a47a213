//! Path-carrying reads of a JSON document: a value of the wrong type becomes a
//! [`Diagnostic`] naming its path, never a panic.

use serde_json::{Map, Value};

use crate::config::Diagnostic;

/// Values longer than this are cut in diagnostics, so one bad field cannot flood a report.
const MAX_RENDERED: usize = 60;

/// A value and the path it was found at (`containerDefinitions[1].user`). The document
/// itself has the empty path, rendered as `$`.
#[derive(Debug, Clone)]
pub(super) struct Node<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Node<'a> {
    pub(super) fn root(value: &'a Value) -> Self {
        Node { value, path: String::new() }
    }

    pub(super) fn value(&self) -> &'a Value {
        self.value
    }

    pub(super) fn path(&self) -> &str {
        if self.path.is_empty() { "$" } else { &self.path }
    }

    pub(super) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// The member `key` of an object; `None` when absent, `null` (the ECS API treats both
    /// alike) or when this is not an object (the caller has reported that already).
    pub(super) fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.value.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Node { value, path: self.child_path(key) }),
        }
    }

    /// A member spelled like `key` but for case: ECS keys are case-sensitive, and
    /// `ContainerDefinitions` (CloudFormation spelling) is a common slip.
    pub(super) fn key_like(&self, key: &str) -> Option<&'a str> {
        self.value.as_object()?.keys().find(|k| k.as_str() != key && k.eq_ignore_ascii_case(key)).map(String::as_str)
    }

    /// An error for a missing member, pointing at a differently-cased spelling if present.
    pub(super) fn missing(&self, key: &str, message: &str) -> Diagnostic {
        let mut message = format!("missing: {message}");
        if let Some(found) = self.key_like(key) {
            message.push_str(&format!(" (found \"{found}\": keys are case-sensitive)"));
        }
        Diagnostic::error(self.child_path(key), None, message)
    }

    pub(super) fn rendered(&self) -> String {
        render(self.value)
    }

    /// An error about this value, carrying it rendered.
    pub(super) fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.path(), Some(&self.rendered()), message)
    }

    pub(super) fn warning(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.path(), Some(&self.rendered()), message)
    }

    pub(super) fn type_error(&self, expected: &str) -> Diagnostic {
        self.error(format!("must be {expected}, not {}", kind(self.value)))
    }

    pub(super) fn as_object(&self) -> Result<&'a Map<String, Value>, Diagnostic> {
        self.value.as_object().ok_or_else(|| self.type_error("an object"))
    }

    pub(super) fn as_array(&self) -> Result<Vec<Node<'a>>, Diagnostic> {
        let items = self.value.as_array().ok_or_else(|| self.type_error("an array"))?;
        Ok(items.iter().enumerate().map(|(i, value)| Node { value, path: format!("{}[{i}]", self.path) }).collect())
    }

    pub(super) fn as_str(&self) -> Result<&'a str, Diagnostic> {
        self.value.as_str().ok_or_else(|| self.type_error("a string"))
    }

    pub(super) fn as_bool(&self) -> Result<bool, Diagnostic> {
        self.value.as_bool().ok_or_else(|| self.type_error("true or false"))
    }

    pub(super) fn as_port(&self) -> Result<u16, Diagnostic> {
        match self.value.as_u64() {
            Some(n) => u16::try_from(n).map_err(|_| self.error("must be a port number from 0 to 65535")),
            None => Err(self.type_error("an integer port number")),
        }
    }
}

/// A value as it appears in a diagnostic: strings bare, everything else as compact JSON,
/// cut at [`MAX_RENDERED`] characters.
pub(super) fn render(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_RENDERED) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_compose_from_the_root() {
        let doc = json!({"a": [{"b": 1}]});
        let root = Node::root(&doc);
        assert_eq!(root.path(), "$");
        let items = root.get("a").unwrap().as_array().unwrap();
        assert_eq!(items[0].get("b").unwrap().path(), "a[0].b");
    }

    #[test]
    fn null_counts_as_absent() {
        let doc = json!({"user": null});
        assert!(Node::root(&doc).get("user").is_none());
    }

    #[test]
    fn wrong_types_name_path_value_and_both_kinds() {
        let doc = json!({"user": 1337, "essential": "yes", "containerPort": 70000});
        let root = Node::root(&doc);
        let d = root.get("user").unwrap().as_str().unwrap_err();
        assert_eq!((d.field.as_str(), d.value.as_deref()), ("user", Some("1337")));
        assert_eq!(d.message, "must be a string, not a number");
        let d = root.get("essential").unwrap().as_bool().unwrap_err();
        assert_eq!(d.message, "must be true or false, not a string");
        let d = root.get("containerPort").unwrap().as_port().unwrap_err();
        assert_eq!(d.message, "must be a port number from 0 to 65535");
    }

    #[test]
    fn missing_keys_point_at_a_differently_cased_spelling() {
        let doc = json!({"ContainerDefinitions": []});
        let d = Node::root(&doc).missing("containerDefinitions", "list the containers");
        assert_eq!(d.field, "containerDefinitions");
        assert_eq!(d.message, "missing: list the containers (found \"ContainerDefinitions\": keys are case-sensitive)");
    }

    #[test]
    fn rendering_is_compact_and_bounded() {
        assert_eq!(render(&json!("1337")), "1337");
        assert_eq!(render(&json!({"a": [1, 2]})), r#"{"a":[1,2]}"#);
        let long = render(&json!("é".repeat(100)));
        assert_eq!(long.chars().count(), MAX_RENDERED + 1);
        assert!(long.ends_with('…'));
    }
}
