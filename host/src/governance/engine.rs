//! The Cedar policy engine: the schema in `policies/`, the active policy set, entity building
//! and decisions.
//!
//! Policies are validated in strict mode against the schema before they become active, so a
//! policy that names an unknown type, action or attribute never reaches a decision.

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

/// The schema every policy set is validated against.
pub const SCHEMA_SOURCE: &str = include_str!("../../../policies/schema.cedarschema");
/// The policy set a new server starts with.
pub const DEFAULT_POLICIES: &str = include_str!("../../../policies/default.cedar");

/// One problem with a submitted policy set, located in the submitted text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyProblem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub reason: String,
}

/// The kinds of entity Strongroom's schema declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Role,
    ServiceAccount,
    Function,
    Connection,
    System,
    Vault,
    Table,
    Column,
    Record,
    Action,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Role => "Strongroom::Role",
            Kind::ServiceAccount => "Strongroom::ServiceAccount",
            Kind::Function => "Strongroom::Function",
            Kind::Connection => "Strongroom::Connection",
            Kind::System => "Strongroom::System",
            Kind::Vault => "Strongroom::Vault",
            Kind::Table => "Strongroom::Table",
            Kind::Column => "Strongroom::Column",
            Kind::Record => "Strongroom::Record",
            Kind::Action => "Strongroom::Action",
        }
    }

    const ALL: [Kind; 10] = [
        Kind::Role,
        Kind::ServiceAccount,
        Kind::Function,
        Kind::Connection,
        Kind::System,
        Kind::Vault,
        Kind::Table,
        Kind::Column,
        Kind::Record,
        Kind::Action,
    ];

    fn type_name(self) -> EntityTypeName {
        static NAMES: OnceLock<Vec<EntityTypeName>> = OnceLock::new();
        let names = NAMES.get_or_init(|| {
            Kind::ALL
                .iter()
                .filter_map(|k| EntityTypeName::from_str(k.name()).ok())
                .collect()
        });
        let i = Kind::ALL.iter().position(|k| *k == self).unwrap_or(0);
        names[i].clone()
    }
}

/// `Strongroom::<Kind>::"<id>"`.
pub fn uid(kind: Kind, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.type_name(), EntityId::new(id))
}

/// The id of the one `System` entity.
pub const SYSTEM: &str = "strongroom";

/// The outcome of one decision.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policies that decided: the permits that allowed, or the forbids that denied (empty
    /// when nothing permitted: deny by default).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (for example `getTag` on a missing tag); they count as
    /// not applying.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A validated policy set, ready to decide.
pub struct PolicyEngine {
    pub version: i64,
    pub source: String,
    policies: PolicySet,
    /// Whether some policy names a `Record` literally; then decisions about records cannot be
    /// shared between records with the same attributes.
    cites_records: bool,
    authorizer: Authorizer,
}

/// The parsed schema (parsed once).
pub fn schema() -> Result<&'static Schema, String> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::from_cedarschema_str(SCHEMA_SOURCE)
                .map(|(schema, _warnings)| schema)
                .map_err(|e| format!("policies/schema.cedarschema is invalid: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn problem(
    source: &str,
    policy: Option<String>,
    d: &dyn Diagnostic,
    reason: String,
) -> PolicyProblem {
    let offset = d
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, column) = match offset {
        Some(o) => {
            let (l, c) = line_col(source, o);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    PolicyProblem {
        policy,
        line,
        column,
        reason,
    }
}

impl PolicyEngine {
    /// Parses and validates `source`. Policies are named by their `@id("…")` annotation.
    pub fn compile(source: &str, version: i64) -> Result<PolicyEngine, Vec<PolicyProblem>> {
        let schema = schema().map_err(|reason| {
            vec![PolicyProblem {
                policy: None,
                line: None,
                column: None,
                reason,
            }]
        })?;
        let parsed = PolicySet::from_str(source).map_err(|errors| {
            errors
                .iter()
                .map(|e| problem(source, None, e, e.to_string()))
                .collect::<Vec<_>>()
        })?;
        let mut problems = Vec::new();
        if parsed.templates().next().is_some() {
            problems.push(PolicyProblem {
                policy: None,
                line: None,
                column: None,
                reason: "policy templates are not supported; write policies".into(),
            });
        }
        let mut named = PolicySet::new();
        let mut seen = HashSet::new();
        let mut cites_records = false;
        for policy in parsed.policies() {
            let id = policy
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| policy.id().to_string());
            if !seen.insert(id.clone()) {
                problems.push(PolicyProblem {
                    policy: Some(id.clone()),
                    line: None,
                    column: None,
                    reason: "two policies share this @id".into(),
                });
                continue;
            }
            cites_records |= cites(policy, Kind::Record);
            if named.add(policy.new_id(PolicyId::new(&id))).is_err() {
                problems.push(PolicyProblem {
                    policy: Some(id),
                    line: None,
                    column: None,
                    reason: "could not add the policy".into(),
                });
            }
        }
        let result = Validator::new(schema.clone()).validate(&named, ValidationMode::Strict);
        for e in result.validation_errors() {
            problems.push(problem(
                source,
                Some(e.policy_id().to_string()),
                e,
                e.to_string(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(PolicyEngine {
            version,
            source: source.to_string(),
            policies: named,
            cites_records,
            authorizer: Authorizer::new(),
        })
    }

    pub fn cites_records(&self) -> bool {
        self.cites_records
    }

    /// Ids of the active policies.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies
            .policies()
            .map(|p| p.id().to_string())
            .collect()
    }

    /// Decides one request.
    pub fn decide(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: Context,
        entities: &Entities,
    ) -> Verdict {
        let request = match Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => {
                return Verdict {
                    allowed: false,
                    policies: vec![],
                    errors: vec![e.to_string()],
                };
            }
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, entities);
        let diagnostics = response.diagnostics();
        Verdict {
            allowed: response.decision() == Decision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors: diagnostics.errors().map(|e| e.to_string()).collect(),
        }
    }
}

/// Whether `policy` names an entity of `kind` literally.
fn cites(policy: &Policy, kind: Kind) -> bool {
    let ty = kind.type_name();
    policy
        .entity_literals()
        .iter()
        .any(|e| e.type_name() == &ty)
}

/// An action entity uid: `Strongroom::Action::"read"`.
pub fn action(name: &str) -> EntityUid {
    uid(Kind::Action, name)
}

/// Builds the entity store one request needs.
#[derive(Default)]
pub struct EntityStore {
    entities: Vec<Entity>,
    seen: HashSet<EntityUid>,
}

fn s(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_string())
}

impl EntityStore {
    fn push(
        &mut self,
        uid: EntityUid,
        attrs: Vec<(String, RestrictedExpression)>,
        parents: Vec<EntityUid>,
        tags: Vec<(String, RestrictedExpression)>,
    ) {
        if !self.seen.insert(uid.clone()) {
            return;
        }
        match Entity::new_with_tags(uid, attrs, parents, tags) {
            Ok(e) => self.entities.push(e),
            // Only string, bool and set literals are built here; they always evaluate.
            Err(e) => tracing::error!(error = %e, "could not build a policy entity"),
        }
    }

    pub fn contains(&self, uid: &EntityUid) -> bool {
        self.seen.contains(uid)
    }

    /// A service account with its roles and attribute tags.
    pub fn service_account(
        &mut self,
        name: &str,
        roles: &[String],
        attributes: &BTreeMap<String, String>,
    ) -> EntityUid {
        let me = uid(Kind::ServiceAccount, name);
        let parents = roles.iter().map(|r| uid(Kind::Role, r)).collect::<Vec<_>>();
        for r in &parents {
            self.push(r.clone(), vec![], vec![], vec![]);
        }
        let tags = attributes.iter().map(|(k, v)| (k.clone(), s(v))).collect();
        self.push(me.clone(), vec![("name".into(), s(name))], parents, tags);
        me
    }

    /// A function principal (member of the `function` role).
    pub fn function(&mut self, name: &str, version: &str) -> EntityUid {
        let me = uid(Kind::Function, name);
        let role = uid(Kind::Role, "function");
        self.push(role.clone(), vec![], vec![], vec![]);
        self.push(
            me.clone(),
            vec![("name".into(), s(name)), ("version".into(), s(version))],
            vec![role],
            vec![],
        );
        me
    }

    pub fn system(&mut self) -> EntityUid {
        let me = uid(Kind::System, SYSTEM);
        self.push(me.clone(), vec![], vec![], vec![]);
        me
    }

    pub fn vault(&mut self, vault: &str) -> EntityUid {
        let system = self.system();
        let me = uid(Kind::Vault, vault);
        self.push(
            me.clone(),
            vec![("name".into(), s(vault))],
            vec![system],
            vec![],
        );
        me
    }

    pub fn table(&mut self, vault: &str, table: &str) -> EntityUid {
        let parent = self.vault(vault);
        let me = uid(Kind::Table, &format!("{vault}/{table}"));
        self.push(
            me.clone(),
            vec![("name".into(), s(table)), ("vault".into(), s(vault))],
            vec![parent],
            vec![],
        );
        me
    }

    pub fn column(&mut self, vault: &str, table: &str, column: &str, data_type: &str) -> EntityUid {
        let parent = self.table(vault, table);
        let me = uid(Kind::Column, &format!("{vault}/{table}/{column}"));
        self.push(
            me.clone(),
            vec![
                ("name".into(), s(column)),
                ("table".into(), s(table)),
                ("vault".into(), s(vault)),
                ("type".into(), s(data_type)),
            ],
            vec![parent],
            vec![],
        );
        me
    }

    /// A record under `id` (its uuid, or a stand-in shared by records with equal facts).
    pub fn record(
        &mut self,
        vault: &str,
        table: &str,
        id: &str,
        attributes: &BTreeMap<String, String>,
        consents: &[String],
    ) -> EntityUid {
        let parent = self.table(vault, table);
        let me = uid(Kind::Record, id);
        let consents = RestrictedExpression::new_set(consents.iter().map(|c| s(c)));
        let tags = attributes.iter().map(|(k, v)| (k.clone(), s(v))).collect();
        self.push(
            me.clone(),
            vec![("consents".into(), consents)],
            vec![parent],
            tags,
        );
        me
    }

    /// The finished store (transitive closure computed).
    pub fn build(self) -> Entities {
        Entities::from_entities(self.entities, None).unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not build the policy entity store");
            Entities::empty()
        })
    }

    /// The finished store, checked against the schema (tests and the dry-run endpoint).
    pub fn build_checked(self) -> Result<Entities, String> {
        let schema = schema()?;
        Entities::from_entities(self.entities, Some(schema)).map_err(|e| e.to_string())
    }
}

/// The context of a data decision.
pub struct Facts<'a> {
    pub purpose: &'a str,
    pub granted: Option<bool>,
    pub record: Option<EntityUid>,
    pub redaction: Option<&'a str>,
}

impl Facts<'_> {
    pub fn context(&self) -> Context {
        let mut pairs = vec![("purpose".to_string(), s(self.purpose))];
        if let Some(g) = self.granted {
            pairs.push(("granted".into(), RestrictedExpression::new_bool(g)));
        }
        if let Some(r) = &self.record {
            pairs.push((
                "record".into(),
                RestrictedExpression::new_entity_uid(r.clone()),
            ));
        }
        if let Some(level) = self.redaction {
            pairs.push(("redaction".into(), s(level)));
        }
        Context::from_pairs(pairs).unwrap_or_else(|_| Context::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(src: &str) -> PolicyEngine {
        match PolicyEngine::compile(src, 1) {
            Ok(e) => e,
            Err(p) => panic!("{p:?}"),
        }
    }

    #[test]
    fn schema_and_default_policies_are_valid() {
        assert!(schema().is_ok());
        let e = engine(DEFAULT_POLICIES);
        assert_eq!(e.policy_ids(), vec!["admin-all".to_string()]);
        assert!(!e.cites_records());
    }

    #[test]
    fn problems_name_the_policy_and_position() {
        let src = "@id(\"ok\")\npermit(principal, action, resource);\n@id(\"bad\")\npermit(principal, action == Strongroom::Action::\"read\", resource)\n  when { principal.nickname == \"x\" };";
        let problems = PolicyEngine::compile(src, 1).err().unwrap_or_default();
        assert!(!problems.is_empty());
        assert_eq!(problems[0].policy.as_deref(), Some("bad"));
        assert_eq!(problems[0].line, Some(5), "{problems:?}");
        let syntax = PolicyEngine::compile("permit(principal, action, resource) when {", 1)
            .err()
            .unwrap_or_default();
        assert_eq!(syntax[0].line, Some(1));
        let unknown = PolicyEngine::compile(
            "permit(principal == Strongroom::User::\"x\", action, resource);",
            1,
        )
        .err()
        .unwrap_or_default();
        assert!(unknown[0].reason.contains("User"), "{unknown:?}");
    }

    #[test]
    fn entities_conform_to_the_schema() {
        let mut store = EntityStore::default();
        let attrs = BTreeMap::from([("team".to_string(), "growth".to_string())]);
        let p = store.service_account("marketing", &["app".into()], &attrs);
        let col = store.column("payments", "customers", "phone", "phone");
        let rec_attrs = BTreeMap::from([("region".to_string(), "CA".to_string())]);
        let rec = store.record(
            "payments",
            "customers",
            "r1",
            &rec_attrs,
            &["marketing".into()],
        );
        store.function("date-split", "sha256:00");
        store.system();
        let entities = match store.build_checked() {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        };
        let e = engine(
            r#"@id("consented")
permit(principal is Strongroom::ServiceAccount in Strongroom::Role::"app", action == Strongroom::Action::"read", resource in Strongroom::Table::"payments/customers")
when { context.record.consents.contains(context.purpose) && context.record.hasTag("region") && context.record.getTag("region") == "CA" && principal.hasTag("team") && principal.getTag("team") == "growth" };"#,
        );
        let facts = |purpose| Facts {
            purpose,
            granted: Some(false),
            record: Some(rec.clone()),
            redaction: Some("plain"),
        };
        let read = action("read");
        let v = e.decide(&p, &read, &col, facts("marketing").context(), &entities);
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, vec!["consented".to_string()]);
        let v = e.decide(&p, &read, &col, facts("integrity").context(), &entities);
        assert!(!v.allowed);
        assert!(v.policies.is_empty());
    }

    #[test]
    fn record_literals_are_noticed() {
        let e = engine(
            "permit(principal, action == Strongroom::Action::\"read\", resource) when { context.record == Strongroom::Record::\"r1\" };",
        );
        assert!(e.cites_records());
    }
}
