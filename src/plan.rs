//! `orgprov plan`: a dry run of one request, and the offline checks `orgprov bulk` runs on
//! every row.
//!
//! [`Checks`] holds the configured targets' provider adapters and the templates. It needs no
//! NATS, no Postgres and no network, and no client secret either: the adapters are built from
//! [`crate::config::Settings::offline_targets`] and never send anything. A request goes through
//! exactly what the worker does before any HTTP call — [`contract::decode`] (size limit,
//! JSON, CloudEvents envelope, request_id, the v1 schema), then the shared
//! [`crate::prepare::examine`] (template render, the provider's documented rules, the create
//! body) — and the provider's own description of its create call
//! ([`crate::providers::Provider::create_request`]), which is what its `create` sends. So plan
//! and the worker cannot disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::ConfigError;
use crate::contract::{self, ErrorCode, ProvisionRequest, Rejection};
use crate::delivery::{Delivery, Unlimited};
use crate::prepare::{self, Examined};
use crate::providers::{self, Provider, Settings, Target};
use crate::store::{EarlyFailure, Prepared};
use crate::template::{OrgSpec, Templates};

/// `orgprov plan`: one request, from a file or from the flags `submit` takes.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// A JSON file holding the whole request (plain or CloudEvents); `--target` and
    /// `--template` override its own.
    #[arg(long, conflicts_with_all = ["name", "display_name", "request_id"])]
    pub file: Option<PathBuf>,
    #[arg(long, required_unless_present = "file")]
    pub target: Option<String>,
    /// A template name (highest version) or `name@version`.
    #[arg(long, required_unless_present = "file")]
    pub template: Option<String>,
    /// organization.name
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    #[arg(long)]
    pub display_name: Option<String>,
    /// The request_id the plan is made for (it is the Idempotency-Key and the ownership tag).
    #[arg(long, default_value = DRY_RUN_ID)]
    pub request_id: String,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The request_id of a plan made from flags without `--request-id`.
pub const DRY_RUN_ID: &str = "dry-run";

/// Runs `orgprov plan`: exit 0 when the worker would send the request, 1 when it breaks a
/// rule (it would fail before any HTTP call), 2 for a configuration or input problem.
pub fn run(settings: &Settings, args: &PlanArgs) -> ExitCode {
    let templates = match Templates::load_dir(&settings.templates_dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error: templates_dir: {e:#}");
            return ExitCode::from(2);
        }
    };
    let checks = match Checks::new(settings, templates) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let payload = match payload_of(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = checks.plan(&payload);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan.to_json()).unwrap_or_default());
    } else {
        print!("{}", plan.to_text());
    }
    if plan.valid { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The message payload `args` describe: the file (with `--target`/`--template` applied, inside
/// a CloudEvents envelope's `data` where there is one), or a request made of the flags.
pub fn payload_of(args: &PlanArgs) -> Result<Vec<u8>, String> {
    let Some(path) = &args.file else {
        let mut organization = json!({ "name": args.name.clone().unwrap_or_default() });
        if let Some(d) = &args.display_name {
            organization["display_name"] = json!(d);
        }
        let request = json!({
            "request_id": args.request_id,
            "target": args.target.clone().unwrap_or_default(),
            "template": args.template.clone().unwrap_or_default(),
            "organization": organization,
            "source": "orgprov-cli",
        });
        return serde_json::to_vec(&request).map_err(|e| e.to_string());
    };
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if args.target.is_none() && args.template.is_none() {
        // The file exactly as a publisher would send it.
        return Ok(bytes);
    }
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let request = if doc.get("specversion").is_some() { &mut doc["data"] } else { &mut doc };
    let Some(request) = request.as_object_mut() else {
        return Err(format!("{}: the request is not a JSON object", path.display()));
    };
    if let Some(t) = &args.target {
        request.insert("target".into(), json!(t));
    }
    if let Some(t) = &args.template {
        request.insert("template".into(), json!(t));
    }
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

/// The configured targets, offline, and the templates.
pub struct Checks {
    targets: BTreeMap<String, (Target, Box<dyn Provider>)>,
    templates: Templates,
}

/// One broken rule: the error code the worker would fail the request with, the request field
/// it is about (dotted, e.g. `organization.name`; `None` when it is about the whole message)
/// and the message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

/// What `orgprov plan` found out about one request.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub request_id: Option<String>,
    pub target: Option<String>,
    pub provider: Option<String>,
    /// The template as the request names it.
    pub template: Option<String>,
    /// The version the name resolved to.
    pub template_version: Option<String>,
    /// No rule broken: the worker would send `http_request`.
    pub valid: bool,
    /// The rendered, provider-neutral organization (when the template rendered).
    pub organization: Option<OrgSpec>,
    /// The create call the worker would send (when every rule holds).
    pub http_request: Option<PlannedCall>,
    pub violations: Vec<Violation>,
}

/// A create call as it would go on the wire, the credential redacted.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedCall {
    pub method: String,
    pub url: String,
    /// Name and value, in the order they are sent; `Authorization` shows only its scheme.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// A request checked offline: the decoded request (when it decoded), what the shared prepare
/// step made of it, and the broken rules.
pub struct Checked {
    pub request: Option<ProvisionRequest>,
    pub examined: Option<Examined>,
    pub violations: Vec<Violation>,
}

impl Checked {
    pub fn prepared(&self) -> Option<&Prepared> {
        self.examined.as_ref().and_then(|e| e.outcome.as_ref().ok())
    }
}

impl Checks {
    /// The adapters of every configured target (no secret needed) and `templates`.
    pub fn new(settings: &Settings, templates: Templates) -> Result<Checks, ConfigError> {
        let mut targets = BTreeMap::new();
        for target in settings.offline_targets()? {
            let delivery = Delivery::new(&target, Arc::new(Unlimited), Duration::ZERO)
                .map_err(|e| ConfigError::Key { key: format!("targets.{}", target.name), message: e.to_string() })?;
            let provider = providers::build(&target, Arc::new(delivery));
            targets.insert(target.name.clone(), (target, provider));
        }
        Ok(Checks { targets, templates })
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.get(name).map(|(t, _)| t)
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Everything the worker checks before any HTTP call, on one message payload.
    pub fn check(&self, payload: &[u8]) -> Checked {
        let request = match contract::decode(payload) {
            Ok(request) => request,
            Err(rejection) => return Checked { request: None, examined: None, violations: rejected(&rejection) },
        };
        let provider = self.targets.get(&request.message.target).map(|(_, p)| &**p);
        let examined = prepare::examine(&request, provider, &self.templates);
        let violations = match &examined.outcome {
            Ok(_) => Vec::new(),
            Err(failure) => early_violations(failure),
        };
        Checked { request: Some(request), examined: Some(examined), violations }
    }

    /// The dry run of one message payload.
    pub fn plan(&self, payload: &[u8]) -> Plan {
        let checked = self.check(payload);
        let message = checked.request.as_ref().map(|r| &r.message);
        let prepared = checked.prepared();
        let mut violations = checked.violations.clone();
        let http_request = match (&checked.request, prepared) {
            (Some(request), Some(prepared)) => {
                let provider = &self.targets[&prepared.target].1;
                match provider.create_request(&prepared.body, &request.request_id) {
                    Ok(call) => Some(PlannedCall::of(&call)),
                    Err(e) => {
                        violations.push(Violation { code: ErrorCode::Internal, field: None, message: e.message });
                        None
                    }
                }
            }
            _ => None,
        };
        let examined = checked.examined.as_ref();
        Plan {
            request_id: checked.request.as_ref().map(|r| r.request_id.to_string()),
            target: message.map(|m| m.target.clone()),
            provider: message.and_then(|m| self.targets.get(&m.target)).map(|(t, _)| t.provider_name().to_owned()),
            template: message.map(|m| m.template.clone()),
            template_version: examined.and_then(|e| e.spec.as_ref()).map(|s| s.template_version.clone()),
            valid: violations.is_empty(),
            organization: examined.and_then(|e| e.spec.clone()),
            http_request,
            violations,
        }
    }
}

impl PlannedCall {
    fn of(call: &providers::CreateRequest) -> PlannedCall {
        let body_bytes = serde_json::to_vec(&call.body).unwrap_or_default();
        let mut headers = vec![("Authorization".to_owned(), call.auth.redacted().to_owned())];
        headers.extend(call.headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        // Set by the HTTP client from the body, which is sent exactly as serde_json writes it.
        headers.push(("Content-Length".to_owned(), body_bytes.len().to_string()));
        PlannedCall { method: call.method.to_owned(), url: call.url.clone(), headers, body: call.body.clone() }
    }
}

/// The broken rules of a message that did not decode.
fn rejected(rejection: &Rejection) -> Vec<Violation> {
    let invalid =
        |field: Option<String>, message: String| Violation { code: ErrorCode::InvalidRequest, field, message };
    match rejection {
        Rejection::Unreadable { reason, .. } => {
            let field = reason.starts_with("request_id").then(|| "request_id".to_owned());
            vec![invalid(field, reason.clone())]
        }
        Rejection::Invalid { reason, details, .. } => {
            let problems = details.get("schema_errors").and_then(Value::as_array);
            match problems {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|p| {
                        let (path, message) = p.split_once(": ").unwrap_or(("", p));
                        let mut field = path.trim_start_matches('/').replace('/', ".");
                        if field == "(root)" {
                            field.clear();
                        }
                        // A missing property is about that property, not the object holding it.
                        if let Some(missing) = message
                            .strip_suffix(" is a required property")
                            .and_then(|q| q.strip_prefix('"'))
                            .and_then(|q| q.strip_suffix('"'))
                        {
                            field = if field.is_empty() { missing.to_owned() } else { format!("{field}.{missing}") };
                        }
                        let field = (!field.is_empty()).then_some(field);
                        let shown = match &field {
                            Some(f) => format!("{f}: {message}"),
                            None => message.to_owned(),
                        };
                        invalid(field, shown)
                    })
                    .collect(),
                _ => vec![invalid(None, reason.clone())],
            }
        }
    }
}

/// The broken rules of a request the shared prepare step refused.
fn early_violations(failure: &EarlyFailure) -> Vec<Violation> {
    let code = failure.error.code;
    prepare::violations(failure)
        .into_iter()
        .map(|message| {
            let field = match code {
                ErrorCode::UnknownTarget => Some("target".to_owned()),
                ErrorCode::UnknownTemplate => Some("template".to_owned()),
                _ => field_of(&message),
            };
            Violation { code, field, message }
        })
        .collect()
}

/// The request field a rule's message is about: the dotted path it starts with
/// (`organization.metadata.plan must be a string`), the path a template could not fill
/// (`... but the request has no admin.email`), `template` for template settings.
pub fn field_of(message: &str) -> Option<String> {
    if let Some((_, missing)) = message.rsplit_once("but the request has no ") {
        return Some(missing.trim().to_owned());
    }
    if message.starts_with("template ") {
        return Some("template".to_owned());
    }
    let first: String =
        message.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
    let first = first.trim_end_matches('.');
    (first.starts_with("organization.") || first.starts_with("admin.") || first == "admin").then(|| first.to_owned())
}

impl Plan {
    /// The plan as text: what is sent, then what is wrong.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "request {}: target {} ({}), template {}{}",
            or(&self.request_id),
            or(&self.target),
            self.provider.as_deref().unwrap_or("not configured"),
            or(&self.template),
            self.template_version.as_ref().map(|v| format!(" (version {v})")).unwrap_or_default(),
        );
        out.push('\n');
        match &self.organization {
            Some(org) => {
                out.push_str("Rendered organization:\n");
                out.push_str(&indent(&pretty(&serde_json::to_value(org).unwrap_or(Value::Null))));
            }
            None => out.push_str("Rendered organization: none (the request fails before rendering)\n"),
        }
        out.push('\n');
        match &self.http_request {
            Some(call) => {
                out.push_str("HTTP request (not sent):\n");
                let _ = writeln!(out, "  {} {}", call.method, call.url);
                for (name, value) in &call.headers {
                    let _ = writeln!(out, "  {name}: {value}");
                }
                out.push('\n');
                out.push_str(&indent(&pretty(&call.body)));
                out.push_str("  (body indented here; sent as compact JSON)\n");
            }
            None => out.push_str("HTTP request: none, the request fails before any HTTP call\n"),
        }
        out.push('\n');
        if self.violations.is_empty() {
            out.push_str("Rules: none broken; the worker would send this request.\n");
        } else {
            let codes: Vec<&str> = {
                let mut c: Vec<&str> = self.violations.iter().map(|v| v.code.as_str()).collect();
                c.dedup();
                c
            };
            let _ = writeln!(
                out,
                "Rules broken ({}); the worker would fail this request as {} before any HTTP call:",
                self.violations.len(),
                codes.join(", ")
            );
            for v in &self.violations {
                match v.field.as_deref() {
                    Some(field) if !v.message.starts_with(field) => {
                        let _ = writeln!(out, "  - {field}: {}", v.message);
                    }
                    _ => {
                        let _ = writeln!(out, "  - {}", v.message);
                    }
                }
            }
        }
        out
    }

    /// The plan as JSON: headers as an object, every field present.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(call) = &self.http_request {
            let headers: Map<String, Value> =
                call.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            v["http_request"]["headers"] = Value::Object(headers);
        }
        v
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example_checks() -> Checks {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let settings = Settings::load(Some(&root.join("deploy/orgprov.example.toml")), Vec::new()).unwrap();
        Checks::new(&settings, Templates::load_dir(&root.join("templates")).unwrap()).unwrap()
    }

    fn flags(name: &str) -> PlanArgs {
        PlanArgs {
            file: None,
            target: Some("acme-auth0".into()),
            template: Some("standard".into()),
            name: Some(name.into()),
            display_name: None,
            request_id: DRY_RUN_ID.into(),
            json: false,
        }
    }

    #[test]
    fn a_plan_from_flags_shows_the_create_call_with_the_credential_redacted() {
        let plan = example_checks().plan(&payload_of(&flags("globex")).unwrap());
        assert!(plan.valid, "{:?}", plan.violations);
        let call = plan.http_request.as_ref().unwrap();
        assert_eq!(
            (call.method.as_str(), call.url.as_str()),
            ("POST", "https://acme.eu.auth0.com/api/v2/organizations")
        );
        let names: Vec<&str> = call.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Authorization", "Content-Type", "User-Agent", "Idempotency-Key", "Content-Length"]);
        assert_eq!(call.headers[0].1, "Bearer <redacted>");
        assert_eq!(call.headers[3].1, DRY_RUN_ID);
        assert_eq!(call.body["metadata"]["orgprov_request_id"], DRY_RUN_ID);
        let text = plan.to_text();
        assert!(text.contains("Authorization: Bearer <redacted>") && text.contains("Rules: none broken"), "{text}");
        assert_eq!(plan.to_json()["http_request"]["headers"]["Idempotency-Key"], DRY_RUN_ID);
    }

    #[test]
    fn a_file_takes_the_target_and_template_flags_inside_a_cloudevent_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let event = json!({ "specversion": "1.0", "id": "e1", "source": "crm", "type": "org.provision.requested",
                            "data": { "request_id": "r1", "target": "elsewhere", "template": "none",
                                      "organization": { "name": "globex" } } });
        std::fs::write(&path, serde_json::to_vec(&event).unwrap()).unwrap();
        let args = PlanArgs { file: Some(path), name: None, ..flags("") };
        let plan = example_checks().plan(&payload_of(&args).unwrap());
        assert_eq!((plan.target.as_deref(), plan.template.as_deref()), (Some("acme-auth0"), Some("standard")));
        assert!(plan.valid, "{:?}", plan.violations);
        let unknown =
            example_checks().plan(&payload_of(&PlanArgs { target: Some("nowhere".into()), ..flags("x") }).unwrap());
        assert_eq!(unknown.violations[0].code, ErrorCode::UnknownTarget);
        assert_eq!(unknown.violations[0].field.as_deref(), Some("target"));
    }

    #[test]
    fn fields_are_read_from_the_messages() {
        let f = |m: &str| field_of(m);
        assert_eq!(f("organization.name \"Acme\" breaks Auth0's rules"), Some("organization.name".into()));
        assert_eq!(
            f("organization.metadata.plan must be a string for Auth0"),
            Some("organization.metadata.plan".into())
        );
        assert_eq!(f("organization.metadata.k: Auth0 allows keys"), Some("organization.metadata.k".into()));
        assert_eq!(f("admin.email is required for BioT's primary administrator"), Some("admin.email".into()));
        assert_eq!(f("admin is required for BioT"), Some("admin".into()));
        assert_eq!(f("template setting biot.phone \"x\" must be"), Some("template".into()));
        assert_eq!(
            f("template standard uses {{admin.email}} but the request has no admin.email"),
            Some("admin.email".into())
        );
        assert_eq!(f("every auth0.enabled_connections entry needs a connection_id string"), None);
    }
}
