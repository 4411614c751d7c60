//! The Cedar policy engine: the schema in `policies/`, the active policy set, entity building
//! and decisions.
//!
//! Policies are validated in strict mode against the schema before they become active, so a
//! policy that names an unknown type, action or attribute never reaches a decision.

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

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
    /// Whether some policy reads `context` beyond `purpose` and `redaction`: the record's facts
    /// (`context.record`, `context.granted`) or the context as a whole.
    reads_record_context: bool,
    authorizer: Authorizer,
    /// The policies whose principal and action scopes can match, per (principal and its
    /// roles, action). Cedar evaluates every policy it is given; most cannot apply.
    slices: Mutex<HashMap<SliceKey, Arc<PolicySet>>>,
    /// Decisions that depend only on their key (administrative actions and connection calls:
    /// no record, no clock), so an engine may answer them again without evaluating. A policy
    /// change builds a new engine, and so starts with an empty memo.
    memo: Mutex<HashMap<MemoKey, Verdict>>,
}

/// (principal, its roles, action).
type SliceKey = (EntityUid, Vec<EntityUid>, EntityUid);

/// A memoised decision's key: a digest of everything the decision depends on (the principal
/// as Cedar sees it, the action, the resource and the context), so the memo holds no attribute
/// values. Decisions never see the clock (time-bound grants arrive as `context.granted`), so
/// equal keys mean equal verdicts under one policy set.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
pub struct MemoKey([u8; 32]);

/// Builds a [`MemoKey`] from length-prefixed fields (so no two field lists collide).
pub struct MemoKeyBuilder(Sha256);

impl MemoKeyBuilder {
    /// `what` names the kind of decision, so keys of different kinds never meet.
    pub fn new(what: &str) -> MemoKeyBuilder {
        MemoKeyBuilder(Sha256::new()).field(what)
    }

    pub fn field(mut self, value: &str) -> MemoKeyBuilder {
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value.as_bytes());
        self
    }

    pub fn fields<'a>(self, values: impl ExactSizeIterator<Item = &'a str>) -> MemoKeyBuilder {
        let count = values.len().to_string();
        values.fold(self.field(&count), MemoKeyBuilder::field)
    }

    /// A principal as Cedar sees it: kind, name, version (functions), roles, attribute tags.
    pub fn principal(
        self,
        kind: Kind,
        name: &str,
        version: &str,
        roles: &[String],
        attributes: &BTreeMap<String, String>,
    ) -> MemoKeyBuilder {
        self.field(kind.name())
            .field(name)
            .field(version)
            .fields(roles.iter().map(String::as_str))
            .fields(attributes.keys().map(String::as_str))
            .fields(attributes.values().map(String::as_str))
    }

    pub fn finish(self) -> MemoKey {
        MemoKey(self.0.finalize().into())
    }
}

/// Most cached slices before the cache starts over.
const MAX_SLICES: usize = 4096;
/// Most memoised decisions before the memo starts over.
const MAX_MEMO: usize = 8192;

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
        let mut reads_record_context = false;
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
            // A policy that cannot be read as JSON is assumed to read everything.
            reads_record_context |= policy
                .to_json()
                .map_or(true, |est| reads_beyond_request(&est));
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
            reads_record_context,
            authorizer: Authorizer::new(),
            slices: Mutex::default(),
            memo: Mutex::default(),
        })
    }

    /// The memoised verdict for `key`, or `decide`'s, remembered.
    pub fn memoised(&self, key: MemoKey, decide: impl FnOnce() -> Verdict) -> Verdict {
        if let Some(hit) = self.memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return hit;
        }
        let verdict = decide();
        if let Ok(mut m) = self.memo.lock() {
            if m.len() >= MAX_MEMO {
                m.clear();
            }
            m.insert(key, verdict.clone());
        }
        verdict
    }

    pub fn cites_records(&self) -> bool {
        self.cites_records
    }

    /// Whether decisions about columns can depend on the record's facts. When not, a
    /// detokenize need not load them.
    pub fn reads_record_context(&self) -> bool {
        self.reads_record_context
    }

    /// Ids of the active policies.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies
            .policies()
            .map(|p| p.id().to_string())
            .collect()
    }

    /// The policies that can apply to `principal` (member of `roles`, which have no parents of
    /// their own in the schema) doing `action`. Sound because Cedar evaluates the scope before
    /// the conditions: a policy whose scope fails neither applies nor errors.
    fn slice(
        &self,
        principal: &EntityUid,
        roles: &[EntityUid],
        action: &EntityUid,
    ) -> Arc<PolicySet> {
        let key = (principal.clone(), roles.to_vec(), action.clone());
        if let Some(hit) = self.slices.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return hit;
        }
        let is_me_or_role = |e: &EntityUid| e == principal || roles.contains(e);
        let mut set = PolicySet::new();
        for p in self.policies.policies() {
            let principal_ok = match p.principal_constraint() {
                PrincipalConstraint::Any => true,
                PrincipalConstraint::Eq(e) => &e == principal,
                PrincipalConstraint::In(e) => is_me_or_role(&e),
                PrincipalConstraint::Is(t) => &t == principal.type_name(),
                PrincipalConstraint::IsIn(t, e) => &t == principal.type_name() && is_me_or_role(&e),
            };
            let action_ok = match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => &a == action,
                ActionConstraint::In(list) => list.contains(action),
            };
            if principal_ok && action_ok && set.add(p.clone()).is_err() {
                // Cannot happen (ids are unique); fall back to the whole set.
                return Arc::new(self.policies.clone());
            }
        }
        let set = Arc::new(set);
        if let Ok(mut m) = self.slices.lock() {
            if m.len() >= MAX_SLICES {
                m.clear();
            }
            m.insert(key, set.clone());
        }
        set
    }

    /// Decides one request, evaluating only the policies whose scope can match.
    pub fn decide_as(
        &self,
        principal: &EntityUid,
        roles: &[EntityUid],
        action: &EntityUid,
        resource: &EntityUid,
        context: Context,
        entities: &Entities,
    ) -> Verdict {
        let slice = self.slice(principal, roles, action);
        self.decide_with(&slice, principal, action, resource, context, entities)
    }

    /// Decides one request against the whole set.
    pub fn decide(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: Context,
        entities: &Entities,
    ) -> Verdict {
        self.decide_with(
            &self.policies,
            principal,
            action,
            resource,
            context,
            entities,
        )
    }

    fn decide_with(
        &self,
        policies: &PolicySet,
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
        let response = self.authorizer.is_authorized(&request, policies, entities);
        let diagnostics = response.diagnostics();
        // Sorted: Cedar reports them from a set, in no particular order.
        let mut policies: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        policies.sort();
        let mut errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        errors.sort();
        Verdict {
            allowed: response.decision() == Decision::Allow,
            policies,
            errors,
        }
    }
}

/// Whether `policy` names an entity of `kind` literally.
/// Whether a policy (its JSON form) reads `context` other than as `context.purpose` or
/// `context.redaction` (or `context has` either).
fn reads_beyond_request(est: &serde_json::Value) -> bool {
    use serde_json::Value;
    let is_context = |v: &Value| v.get("Var").and_then(Value::as_str) == Some("context");
    match est {
        Value::Object(map) => {
            if is_context(est) {
                return true;
            }
            for op in [".", "has"] {
                if let Some(inner) = map.get(op)
                    && inner.get("left").is_some_and(is_context)
                {
                    let attr = inner.get("attr").and_then(Value::as_str);
                    return !matches!(attr, Some("purpose" | "redaction"));
                }
            }
            map.values().any(reads_beyond_request)
        }
        Value::Array(items) => items.iter().any(reads_beyond_request),
        _ => false,
    }
}

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

    pub fn connection(&mut self, name: &str) -> EntityUid {
        let me = uid(Kind::Connection, name);
        let role = uid(Kind::Role, "connection");
        self.push(role.clone(), vec![], vec![], vec![]);
        self.push(
            me.clone(),
            vec![("name".into(), s(name))],
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
    fn slices_decide_like_the_whole_set() {
        let e = engine(
            r#"@id("a") permit(principal in Strongroom::Role::"app", action == Strongroom::Action::"read", resource);
@id("b") permit(principal == Strongroom::ServiceAccount::"x", action in [Strongroom::Action::"read", Strongroom::Action::"detokenize"], resource);
@id("c") forbid(principal in Strongroom::Role::"app", action, resource) when { context.purpose == "ads" };
@id("d") permit(principal is Strongroom::Function, action, resource);"#,
        );
        let mut store = EntityStore::default();
        let x = store.service_account("x", &["app".into()], &BTreeMap::new());
        let y = store.service_account("y", &["other".into()], &BTreeMap::new());
        let col = store.column("v", "t", "c", "string");
        let rec = store.record("v", "t", "r", &BTreeMap::new(), &[]);
        let entities = store.build();
        for (who, roles) in [
            (&x, vec![uid(Kind::Role, "app")]),
            (&y, vec![uid(Kind::Role, "other")]),
        ] {
            for act in ["read", "detokenize", "update"] {
                for purpose in ["", "ads"] {
                    let ctx = || {
                        Facts {
                            purpose,
                            granted: Some(false),
                            record: Some(rec.clone()),
                            redaction: Some("plain"),
                        }
                        .context()
                    };
                    let whole = e.decide(who, &action(act), &col, ctx(), &entities);
                    let sliced = e.decide_as(who, &roles, &action(act), &col, ctx(), &entities);
                    assert_eq!(whole, sliced, "{who} {act} {purpose}");
                }
            }
        }
    }

    #[test]
    fn memo_keys_separate_their_fields() {
        let key = |fields: &[&str]| {
            fields
                .iter()
                .fold(MemoKeyBuilder::new("t"), |b, f| b.field(f))
                .finish()
        };
        assert!(key(&["ab", "c"]) == key(&["ab", "c"]));
        assert!(key(&["ab", "c"]) != key(&["a", "bc"]));
        assert!(key(&["ab", ""]) != key(&["ab"]));
        let list = |items: &[&str], then: &str| {
            MemoKeyBuilder::new("t")
                .fields(items.iter().copied())
                .field(then)
                .finish()
        };
        assert!(list(&["a", "b"], "c") != list(&["a"], "b"));
        let attrs = |k: &str, v: &str| {
            MemoKeyBuilder::new("t")
                .principal(
                    Kind::ServiceAccount,
                    "x",
                    "",
                    &[],
                    &BTreeMap::from([(k.into(), v.into())]),
                )
                .finish()
        };
        assert!(attrs("region", "CA") != attrs("region", "NY"));
        assert!(attrs("region", "CA") != attrs("team", "CA"));
    }

    #[test]
    fn memoised_verdicts_are_answered_again_without_deciding() {
        let e = engine("permit(principal, action, resource);");
        let key = MemoKeyBuilder::new("t").field("k").finish();
        let allow = Verdict {
            allowed: true,
            policies: vec!["p".into()],
            errors: vec![],
        };
        assert_eq!(e.memoised(key, || allow.clone()), allow);
        assert_eq!(e.memoised(key, || unreachable!("memoised")), allow);
        // a new engine (a policy change) starts empty
        let fresh = engine("permit(principal, action, resource);");
        let deny = Verdict {
            allowed: false,
            policies: vec![],
            errors: vec![],
        };
        assert_eq!(fresh.memoised(key, || deny.clone()), deny);
    }

    #[test]
    fn reading_the_records_facts_is_noticed() {
        let reads = |cond: &str| {
            engine(&format!(
                "permit(principal, action == Strongroom::Action::\"detokenize\", resource) when {{ {cond} }};"
            ))
            .reads_record_context()
        };
        assert!(!reads("context.purpose == \"billing\""));
        assert!(!reads(
            "context has redaction && context.redaction == \"plain\""
        ));
        assert!(!reads(
            "resource.type == \"ssn\" && principal.hasTag(\"team\")"
        ));
        assert!(reads("context.granted"));
        assert!(reads("context has granted && context.granted"));
        assert!(reads("context.record.consents.contains(context.purpose)"));
        assert!(reads("context.record.hasTag(\"region\")"));
        assert!(!engine("permit(principal, action, resource);").reads_record_context());
    }

    #[test]
    fn record_literals_are_noticed() {
        let e = engine(
            "permit(principal, action == Strongroom::Action::\"read\", resource) when { context.record == Strongroom::Record::\"r1\" };",
        );
        assert!(e.cites_records());
    }
}
