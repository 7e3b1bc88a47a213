//! The forms `--task-definition` reads, told apart by content: a task definition in JSON (as
//! registered, or describe-task-definition output), a CloudFormation template (YAML or JSON,
//! CDK's synthesized ones among them), and Terraform's JSON (`terraform show -json` of a plan
//! or the state, and `terraform.tfstate`). A template yields every task definition in it with
//! a proxy configuration, each in the registered form, under its name.

mod cloudformation;
mod intrinsics;
mod terraform;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What every refusal of an unreadable file says about the forms that are read.
pub const FORMS: &str = "--task-definition reads an ECS task definition in JSON (as registered, or as \
     `aws ecs describe-task-definition` prints it), a CloudFormation template in YAML or JSON (`cdk synth` writes \
     one for a CDK app), or Terraform's JSON (`terraform show -json` of a plan or of the state, or terraform.tfstate); \
     render anything else (HCL, jq or shell templates) into one of these first";

/// The kind of template CloudFormation's are called in messages (`--parameter` needs one).
pub const CLOUDFORMATION: &str = "CloudFormation template";

/// One task definition of a template, in the registered form, or why it cannot be made.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The CloudFormation logical id or the Terraform resource address.
    pub name: String,
    pub document: Result<Value, Vec<crate::config::Diagnostic>>,
}

/// A template holding no task definition with a proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoTaskDefinition {
    /// The resource type looked for.
    pub kind: &'static str,
    /// The task definitions that have no proxy configuration.
    pub without: Vec<String>,
}

impl NoTaskDefinition {
    pub fn message(&self) -> String {
        let mut message = format!("holds no {} with a proxy configuration, so there is nothing to check", self.kind);
        if !self.without.is_empty() {
            message.push_str(&format!(" (without one: {})", names(&self.without)));
        }
        message
    }
}

/// Names for a message, the first few of a long list: a template may hold thousands.
pub fn names(names: &[impl AsRef<str>]) -> String {
    const SHOWN: usize = 10;
    let shown: Vec<&str> = names.iter().take(SHOWN).map(AsRef::as_ref).collect();
    match names.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        more => format!("{}, … and {more} more", shown.join(", ")),
    }
}

/// What a `--task-definition` file is.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    /// One task definition in JSON, as given.
    TaskDefinition(Value),
    /// A template: its kind (for messages) and its task definitions.
    Template(&'static str, Result<Vec<Found>, NoTaskDefinition>),
}

/// Why a text is none of the forms read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}; {FORMS}")]
pub struct Unreadable(String);

/// Which form `text` is, by its content. `given` holds `--parameter` values.
pub fn read(text: &str, given: &BTreeMap<String, String>) -> Result<Form, Unreadable> {
    let json_error = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(top)) => return Ok(classify(top, given)),
        Ok(doc) => return Ok(Form::TaskDefinition(doc)),
        Err(e) => e,
    };
    let yaml = yaml::parse(text);
    match yaml {
        Ok(Value::Object(top)) if is_cloudformation(&top) => Ok(cloudformation(&top, given)),
        _ if text.trim_start().starts_with(['{', '[']) => Err(Unreadable(format!("not valid JSON: {json_error}"))),
        Ok(_) => Err(Unreadable("neither JSON nor a CloudFormation template (no Resources section)".to_owned())),
        Err(e) => Err(Unreadable(format!("neither JSON nor a YAML template intercept reads: {e}"))),
    }
}

fn is_cloudformation(top: &Map<String, Value>) -> bool {
    top.get("Resources").is_some_and(Value::is_object) || top.contains_key("AWSTemplateFormatVersion")
}

fn cloudformation(top: &Map<String, Value>, given: &BTreeMap<String, String>) -> Form {
    Form::Template(CLOUDFORMATION, cloudformation::task_definitions(top, given))
}

fn classify(top: Map<String, Value>, given: &BTreeMap<String, String>) -> Form {
    if is_cloudformation(&top) {
        return cloudformation(&top, given);
    }
    if top.contains_key("format_version") && (top.contains_key("planned_values") || top.contains_key("values")) {
        return Form::Template("Terraform JSON", terraform::show_json(&top));
    }
    if top.contains_key("terraform_version") && top.get("resources").is_some_and(Value::is_array) {
        return Form::Template("Terraform state", terraform::state(&top));
    }
    Form::TaskDefinition(Value::Object(top))
}
