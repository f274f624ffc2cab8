//! Who may do what: API tokens with a role (viewer, operator, admin) and optional scopes
//! (`tracking`, `labels:MODEL`, `job:ID`) that narrow them; the rule that decides whether a
//! token may use a route; token creation, listing, revocation and the rotation of the
//! bootstrap admin token. Tokens are stored as SHA-256 hashes and shown once.

use std::fmt;

use crate::PlaneCore;
use crate::store::{StoreError, TokenRecord};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("token `{0}` has expired")]
    Expired(String),
    #[error("token `{0}` was revoked")]
    Revoked(String),
    #[error("token `{name}` ({role}{scopes}) may not {what}")]
    Forbidden { name: String, role: &'static str, scopes: String, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no token {0}")]
    NotFound(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a token may do at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also changes the fleet: deploys, rollouts, experiments, aliases, tracking, policies.
    Operator,
    /// Also manages tokens, enrolments and keys.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, AccessError> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(AccessError::Invalid(format!("role `{other}`: expected viewer, operator or admin"))),
        }
    }
}

/// A narrowing of a token to one area of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The MLflow-compatible API only (data scientists, trainers).
    Tracking,
    /// Posting labels for one model (a labelling tool).
    Labels(String),
    /// What one retraining job needs: its dataset, registering its result, reporting its state.
    Job(i64),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Tracking => write!(f, "tracking"),
            Scope::Labels(model) => write!(f, "labels:{model}"),
            Scope::Job(id) => write!(f, "job:{id}"),
        }
    }
}

impl Scope {
    pub fn parse(text: &str) -> Result<Self, AccessError> {
        let invalid = || AccessError::Invalid(format!("scope `{text}`: expected tracking, labels:MODEL or job:ID"));
        match text.split_once(':') {
            None if text == "tracking" => Ok(Scope::Tracking),
            Some(("labels", model)) if fleetml_shared::topics::is_valid_name(model) => Ok(Scope::Labels(model.to_string())),
            Some(("job", id)) => id.parse::<i64>().ok().filter(|id| *id > 0).map(Scope::Job).ok_or_else(invalid),
            _ => Err(invalid()),
        }
    }
}

/// The part of the API a route belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Area {
    /// The native API under `/api/v1`.
    Native,
    /// The MLflow-compatible API.
    Tracking,
    /// Labels of one model.
    Labels(String),
    /// One retraining job's routes.
    Job(i64),
}

/// What a route asks of the token that calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any valid token.
    Read,
    /// Changes the fleet or the registry: an operator.
    Operate,
    /// Changes who may do what: an admin.
    Administer,
}

impl Need {
    fn role(self) -> Role {
        match self {
            Need::Read => Role::Viewer,
            Need::Operate => Role::Operator,
            Need::Administer => Role::Admin,
        }
    }
}

/// The token behind a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
}

impl Principal {
    fn scopes_text(&self) -> String {
        if self.scopes.is_empty() {
            String::new()
        } else {
            format!(", scoped to {}", self.scopes.iter().map(Scope::to_string).collect::<Vec<_>>().join(" "))
        }
    }

    /// Whether this token may do `need` in `area`: its role must reach the need, and a scoped
    /// token only works in the areas its scopes name. `what` words the refusal.
    pub fn allows(&self, area: &Area, need: Need, what: &str) -> Result<(), AccessError> {
        let scope_admits = self.scopes.is_empty()
            || self.scopes.iter().any(|scope| match (scope, area) {
                (Scope::Tracking, Area::Tracking) => true,
                (Scope::Labels(model), Area::Labels(route_model)) => model == route_model,
                (Scope::Job(id), Area::Job(route_id)) => id == route_id,
                // A job registers its result and logs its run through the tracking API.
                (Scope::Job(_), Area::Tracking) => true,
                _ => false,
            });
        if scope_admits && self.role >= need.role() {
            return Ok(());
        }
        Err(AccessError::Forbidden {
            name: self.name.clone(),
            role: self.role.as_str(),
            scopes: self.scopes_text(),
            what: what.to_string(),
        })
    }
}

/// Scopes as stored: space-separated.
pub fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(Scope::to_string).collect::<Vec<_>>().join(" ")
}

pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, AccessError> {
    text.split_whitespace().map(Scope::parse).collect()
}

/// The principal a bearer token stands for, if it is valid now.
pub async fn authenticate(core: &PlaneCore, bearer: Option<&str>) -> Result<Principal, AccessError> {
    let token = bearer.map(str::trim).filter(|token| !token.is_empty()).ok_or(AccessError::Unauthenticated)?;
    let record = core.store.token_by_hash(&crate::keys::token_hash(token)).await?.ok_or(AccessError::Unauthenticated)?;
    let now_ms = fleetml_shared::now_ms() as i64;
    if record.revoked_ms.is_some() {
        return Err(AccessError::Revoked(record.name));
    }
    if record.expires_ms.is_some_and(|expires_ms| expires_ms <= now_ms) {
        return Err(AccessError::Expired(record.name));
    }
    principal(&record)
}

fn principal(record: &TokenRecord) -> Result<Principal, AccessError> {
    let role = Role::parse(&record.role).map_err(|_| StoreError::Corrupt(format!("token {} role `{}`", record.id, record.role)))?;
    let scopes =
        parse_scopes(&record.scopes).map_err(|_| StoreError::Corrupt(format!("token {} scopes `{}`", record.id, record.scopes)))?;
    Ok(Principal { token_id: record.id, name: record.name.clone(), role, scopes })
}

/// A new token: who it is for, what it may do, until when.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
    pub expires_ms: Option<i64>,
}

/// A token just made: its record and its value, which is shown this once.
pub struct Issued {
    pub record: TokenRecord,
    pub token: String,
}

fn check_name(name: &str) -> Result<(), AccessError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(AccessError::Invalid("a token's name is 1 to 128 printable characters".into()));
    }
    Ok(())
}

/// Makes a token (stored hashed). `created_by` names the token that asked.
pub async fn create(core: &PlaneCore, new: NewToken, created_by: &str) -> Result<Issued, AccessError> {
    check_name(&new.name)?;
    let now_ms = fleetml_shared::now_ms() as i64;
    if new.expires_ms.is_some_and(|expires_ms| expires_ms <= now_ms) {
        return Err(AccessError::Invalid("the expiry is in the past".into()));
    }
    let token = crate::keys::new_token().map_err(|error| AccessError::Invalid(error.to_string()))?;
    let record = TokenRecord {
        id: 0,
        token_sha256: crate::keys::token_hash(&token),
        name: new.name,
        role: new.role.as_str().to_string(),
        scopes: scopes_text(&new.scopes),
        bootstrap: false,
        created_ms: now_ms,
        created_by: created_by.to_string(),
        expires_ms: new.expires_ms,
        revoked_ms: None,
        last_used_ms: None,
    };
    let id = core.store.insert_token(&record).await?;
    Ok(Issued { record: TokenRecord { id, ..record }, token })
}

/// Revokes a token now; every later request with it is refused.
pub async fn revoke(core: &PlaneCore, id: i64) -> Result<TokenRecord, AccessError> {
    let record = core.store.get_token(id).await?.ok_or(AccessError::NotFound(id))?;
    if record.revoked_ms.is_none() {
        core.store.revoke_token(id, fleetml_shared::now_ms() as i64).await?;
    }
    core.store.get_token(id).await?.ok_or(AccessError::NotFound(id))
}

/// Replaces the bootstrap admin token: the old one (and any other bootstrap token) is revoked,
/// the new one written to the data folder (owner-only) and returned this once.
pub async fn rotate_admin(core: &PlaneCore, rotated_by: &str) -> Result<Issued, AccessError> {
    let issued =
        create(core, NewToken { name: "admin".into(), role: Role::Admin, scopes: Vec::new(), expires_ms: None }, rotated_by).await?;
    core.store.set_token_bootstrap(issued.record.id).await?;
    let now_ms = fleetml_shared::now_ms() as i64;
    for record in core.store.list_tokens().await? {
        if record.bootstrap && record.id != issued.record.id && record.revoked_ms.is_none() {
            core.store.revoke_token(record.id, now_ms).await?;
        }
    }
    let path = core.data_dir.join(crate::keys::ADMIN_TOKEN_FILE);
    crate::keys::replace_private(&path, issued.token.as_bytes()).map_err(|error| AccessError::Invalid(format!("{error:#}")))?;
    Ok(Issued { record: TokenRecord { bootstrap: true, ..issued.record }, token: issued.token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, scopes: &[&str]) -> Principal {
        Principal { token_id: 1, name: "t".into(), role, scopes: scopes.iter().map(|scope| Scope::parse(scope).unwrap()).collect() }
    }

    #[track_caller]
    fn check(who: &Principal, area: Area, need: Need, allowed: bool) {
        assert_eq!(who.allows(&area, need, "do it").is_ok(), allowed, "{who:?} {area:?} {need:?}");
    }

    #[test]
    fn roles_reach_what_they_name() {
        let viewer = principal(Role::Viewer, &[]);
        let operator = principal(Role::Operator, &[]);
        let admin = principal(Role::Admin, &[]);
        check(&viewer, Area::Native, Need::Read, true);
        check(&viewer, Area::Native, Need::Operate, false);
        check(&viewer, Area::Tracking, Need::Operate, false);
        check(&operator, Area::Native, Need::Operate, true);
        check(&operator, Area::Native, Need::Administer, false);
        check(&admin, Area::Native, Need::Administer, true);
        check(&admin, Area::Labels("m".into()), Need::Operate, true);
    }

    #[test]
    fn scopes_keep_a_token_in_its_area() {
        let tracking = principal(Role::Operator, &["tracking"]);
        check(&tracking, Area::Tracking, Need::Operate, true);
        check(&tracking, Area::Native, Need::Read, false);
        check(&tracking, Area::Native, Need::Operate, false);
        let labels = principal(Role::Operator, &["labels:iris"]);
        check(&labels, Area::Labels("iris".into()), Need::Operate, true);
        check(&labels, Area::Labels("digits".into()), Need::Operate, false);
        check(&labels, Area::Tracking, Need::Read, false);
        let job = principal(Role::Operator, &["job:7"]);
        check(&job, Area::Job(7), Need::Operate, true);
        check(&job, Area::Job(8), Need::Read, false);
        check(&job, Area::Tracking, Need::Operate, true);
        check(&job, Area::Native, Need::Read, false);
        // A scope never lifts the role.
        check(&principal(Role::Viewer, &["tracking"]), Area::Tracking, Need::Operate, false);
    }

    #[test]
    fn scopes_and_roles_parse_or_say_why_not() {
        assert_eq!(parse_scopes("tracking labels:iris job:3").unwrap(), vec![Scope::Tracking, Scope::Labels("iris".into()), Scope::Job(3)]);
        for bad in ["job:x", "job:0", "labels:", "labels:a b", "everything"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(scopes_text(&parse_scopes("tracking job:3").unwrap()), "tracking job:3");
        assert!(Role::parse("root").unwrap_err().to_string().contains("viewer, operator or admin"));
        let refusal = principal(Role::Viewer, &["tracking"]).allows(&Area::Native, Need::Operate, "deploy").unwrap_err().to_string();
        assert_eq!(refusal, "token `t` (viewer, scoped to tracking) may not deploy");
    }
}
