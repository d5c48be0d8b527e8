//! Templates: versioned TOML files that turn a request into a provider-neutral
//! [`OrgSpec`].
//!
//! A template holds defaults (display name pattern, description, metadata, branding, domains)
//! and per-provider settings (`[settings.auth0]`, ...). Request fields win over template
//! defaults; metadata maps are merged key by key. Substitution (`{{organization.name}}`) runs on
//! string *values* of the parsed template, never on JSON or TOML text, so a request value can
//! never inject structure. The worker renders once, at the first claim, and stores the result.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::{Admin, Branding, ProvisionRequest};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    version: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for the people who write templates
    description: Option<String>,
    #[serde(default)]
    organization: OrganizationDefaults,
    #[serde(default)]
    settings: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrganizationDefaults {
    display_name: Option<String>,
    description: Option<String>,
    domains: Option<Vec<String>>,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    #[serde(default)]
    branding: Branding,
}

/// One loaded template.
#[derive(Clone, Debug)]
pub struct Template {
    pub name: String,
    pub version: String,
    file: TemplateFile,
}

/// The rendered organization, the same shape for every provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrgSpec {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub email: Option<String>,
    pub parent_id: Option<String>,
    pub domains: Vec<String>,
    pub metadata: BTreeMap<String, Value>,
    pub branding: Branding,
    pub admin: Option<Admin>,
    /// The template's `[settings.<provider>]` table, rendered.
    pub settings: BTreeMap<String, Value>,
    pub template: String,
    pub template_version: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("unknown template {0:?}")]
    UnknownTemplate(String),
    #[error("template {template} uses {{{{{path}}}}} but the request has no {path}")]
    MissingValue { template: String, path: String },
}

/// All templates of the templates directory, by name, every version.
#[derive(Clone, Debug, Default)]
pub struct Templates {
    by_name: BTreeMap<String, Vec<Template>>,
}

impl Templates {
    /// Loads every `*.toml` file of `dir`. Errors name the file and the problem.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Templates> {
        let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("templates_dir {}: {e}", dir.display()))?;
        let mut templates = Templates::default();
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let text = std::fs::read_to_string(&path)?;
            templates.add_toml(&text).map_err(|e| anyhow::anyhow!("template file {}: {e}", path.display()))?;
        }
        Ok(templates)
    }

    /// Adds one template from TOML text.
    pub fn add_toml(&mut self, text: &str) -> anyhow::Result<()> {
        let file: TemplateFile = toml::from_str(text)?;
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        anyhow::ensure!(valid(&file.name), "name {:?} must be letters, digits, '.', '_' or '-'", file.name);
        anyhow::ensure!(valid(&file.version), "version {:?} must be letters, digits, '.', '_' or '-'", file.version);
        let versions = self.by_name.entry(file.name.clone()).or_default();
        anyhow::ensure!(
            !versions.iter().any(|t| t.version == file.version),
            "template {}@{} is defined twice",
            file.name,
            file.version
        );
        versions.push(Template { name: file.name.clone(), version: file.version.clone(), file });
        versions.sort_by(|a, b| version_order(&a.version, &b.version));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// `name` picks the highest version; `name@version` an exact one.
    pub fn get(&self, reference: &str) -> Result<&Template, RenderError> {
        let unknown = || RenderError::UnknownTemplate(reference.to_owned());
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        let versions = self.by_name.get(name).ok_or_else(unknown)?;
        match version {
            Some(v) => versions.iter().find(|t| t.version == v).ok_or_else(unknown),
            None => versions.last().ok_or_else(unknown),
        }
    }

    pub fn render(&self, request: &ProvisionRequest, provider: &str) -> Result<OrgSpec, RenderError> {
        self.get(&request.message.template)?.render(request, provider)
    }
}

/// Numeric versions compare as numbers (`10` > `9`), others as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| s.split('.').map(|p| p.parse::<u64>().ok()).collect::<Option<Vec<_>>>();
    match (parts(a), parts(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl Template {
    pub fn render(&self, request: &ProvisionRequest, provider: &str) -> Result<OrgSpec, RenderError> {
        let ctx = Context { template: format!("{}@{}", self.name, self.version), doc: &request.document };
        let org = &request.message.organization;
        let d = &self.file.organization;
        let text = |v: &Option<String>| v.as_deref().map(|s| ctx.substitute(s)).transpose();

        let mut metadata = BTreeMap::new();
        for (k, v) in &d.metadata {
            metadata.insert(k.clone(), ctx.substitute_value(v)?);
        }
        metadata.extend(org.metadata.clone().unwrap_or_default());

        let default_branding = Branding {
            logo_url: text(&d.branding.logo_url)?,
            primary_color: text(&d.branding.primary_color)?,
            page_background_color: text(&d.branding.page_background_color)?,
        };
        let given = org.branding.clone().unwrap_or_default();
        let branding = Branding {
            logo_url: given.logo_url.or(default_branding.logo_url),
            primary_color: given.primary_color.or(default_branding.primary_color),
            page_background_color: given.page_background_color.or(default_branding.page_background_color),
        };
        let settings = match self.file.settings.get(provider) {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), ctx.substitute_value(v)?)))
                .collect::<Result<_, RenderError>>()?,
            _ => BTreeMap::new(),
        };
        let domains = match &org.domains {
            Some(d) => d.clone(),
            None => d.domains.iter().flatten().map(|s| ctx.substitute(s)).collect::<Result<_, _>>()?,
        };
        Ok(OrgSpec {
            name: org.name.clone(),
            display_name: match &org.display_name {
                Some(v) => Some(v.clone()),
                None => text(&d.display_name)?,
            },
            description: match &org.description {
                Some(v) => Some(v.clone()),
                None => text(&d.description)?,
            },
            email: org.email.clone(),
            parent_id: org.parent_id.clone(),
            domains,
            metadata,
            branding,
            admin: request.message.admin.clone(),
            settings,
            template: self.name.clone(),
            template_version: self.version.clone(),
        })
    }
}

struct Context<'a> {
    template: String,
    doc: &'a Value,
}

impl Context<'_> {
    fn lookup(&self, path: &str) -> Result<String, RenderError> {
        let mut v = self.doc;
        for part in path.split('.') {
            v = v.get(part).unwrap_or(&Value::Null);
        }
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(RenderError::MissingValue { template: self.template.clone(), path: path.to_owned() }),
        }
    }

    /// Replaces each `{{path}}` in one string value.
    fn substitute(&self, s: &str) -> Result<String, RenderError> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start..].find("}}") else { break };
            out.push_str(&rest[..start]);
            out.push_str(&self.lookup(rest[start + 2..start + len].trim())?);
            rest = &rest[start + len + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn substitute_value(&self, v: &Value) -> Result<Value, RenderError> {
        Ok(match v {
            Value::String(s) => Value::String(self.substitute(s)?),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.substitute_value(x)).collect::<Result<_, _>>()?),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| Ok((k.clone(), self.substitute_value(x)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
            other => other.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::decode;

    const STANDARD_1: &str = r##"
name = "standard"
version = "1"
[organization]
display_name = "{{organization.name}} (v1)"
[organization.metadata]
plan = "standard"
"##;
    const STANDARD_2: &str = r##"
name = "standard"
version = "2"
[organization]
display_name = "Customer {{organization.name}}"
description = "Signed up via {{source}}"
[organization.metadata]
plan = "gold"
tier = "{{organization.name}}"
[organization.branding]
primary_color = "#112233"
[settings.auth0]
enabled_connections = [{ connection_id = "con_{{target}}", assign_membership_on_login = true }]
"##;

    fn templates() -> Templates {
        let mut t = Templates::default();
        t.add_toml(STANDARD_2).unwrap();
        t.add_toml(STANDARD_1).unwrap();
        t
    }

    fn request(extra: &str) -> crate::contract::ProvisionRequest {
        let text = format!(
            r#"{{"request_id":"r1","target":"acme","template":"standard","source":"crm","organization":{{"name":"globex"{extra}}}}}"#
        );
        decode(text.as_bytes()).unwrap()
    }

    #[test]
    fn picks_highest_version_unless_pinned() {
        let t = templates();
        assert_eq!(t.get("standard").unwrap().version, "2");
        assert_eq!(t.get("standard@1").unwrap().version, "1");
        assert_eq!(t.get("standard@9").unwrap_err(), RenderError::UnknownTemplate("standard@9".into()));
        assert!(t.get("premium").is_err());
    }

    #[test]
    fn renders_defaults_and_request_values_win() {
        let spec = templates().render(&request(r#","metadata":{"plan":"trial"}"#), "auth0").unwrap();
        assert_eq!(spec.display_name.as_deref(), Some("Customer globex"));
        assert_eq!(spec.description.as_deref(), Some("Signed up via crm"));
        assert_eq!(spec.metadata["plan"], "trial");
        assert_eq!(spec.metadata["tier"], "globex");
        assert_eq!(spec.branding.primary_color.as_deref(), Some("#112233"));
        assert_eq!(spec.settings["enabled_connections"][0]["connection_id"], "con_acme");
        assert_eq!((spec.template.as_str(), spec.template_version.as_str()), ("standard", "2"));
    }

    #[test]
    fn substitution_never_injects_structure() {
        let spec = templates().render(&request(r#","display_name":null"#.replace("null", "\"x\"").as_str()), "auth0");
        assert!(spec.is_ok());
        let nasty = decode(br#"{"request_id":"r1","target":"acme\", \"evil\": \"1","template":"standard","source":"crm","organization":{"name":"globex"}}"#).unwrap();
        let spec = templates().render(&nasty, "auth0").unwrap();
        assert_eq!(spec.settings["enabled_connections"][0]["connection_id"], "con_acme\", \"evil\": \"1");
        assert_eq!(spec.settings["enabled_connections"][0].as_object().unwrap().len(), 2);
    }

    #[test]
    fn a_missing_value_is_a_clear_error() {
        let mut t = Templates::default();
        t.add_toml("name = \"x\"\nversion = \"1\"\n[organization]\ndescription = \"for {{admin.email}}\"\n").unwrap();
        let mut req = request("");
        req.message.template = "x".into();
        let err = t.render(&req, "auth0").unwrap_err().to_string();
        assert_eq!(err, "template x@1 uses {{admin.email}} but the request has no admin.email");
    }

    #[test]
    fn shipped_templates_load() {
        let t = Templates::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))).unwrap();
        assert!(t.get("standard").is_ok());
    }
}
