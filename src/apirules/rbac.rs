//! The RBAC authorizer, over the Roles, ClusterRoles and bindings of rendered manifests
//! (`kubectl kustomize deploy/`), as kube-apiserver runs it for a ServiceAccount's token:
//!
//! - request attributes from the URL: staging/src/k8s.io/apiserver/pkg/endpoints/request/
//!   requestinfo.go (`RequestInfoFactory.NewRequestInfo`): verb from the method (a GET of a
//!   collection is `list`, or `watch` with `watch=true`, and stays `list` with a
//!   `metadata.name` field selector, which only sets the name), namespace, resource, name,
//!   subresource (`nodes/status`);
//! - which rules apply: plugin/pkg/auth/authorizer/rbac/rbac.go (`RBACAuthorizer.Authorize`,
//!   `RuleAllows`) and pkg/registry/rbac/validation/rule.go (`VisitRulesFor`, `appliesToUser`):
//!   ClusterRoleBindings everywhere, RoleBindings (to a Role of their namespace or a
//!   ClusterRole) only for requests in their namespace;
//! - how a rule matches: pkg/apis/rbac/helpers.go (`VerbMatches`, `APIGroupMatches`,
//!   `ResourceMatches` with `resource/subresource` and `*/subresource`,
//!   `ResourceNameMatches`, `NonResourceURLMatches`);
//! - the 403: staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go
//!   (`Forbidden`, `forbiddenMessage`) and apimachinery/pkg/api/errors (`NewForbidden`).
//!
//! Discovery (`/api`, `/apis`, `/version`, ...) is allowed to every authenticated user, as the
//! bootstrap `system:discovery` and `system:public-info-viewer` ClusterRoles do
//! (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go).

use serde_json::Value;

use super::Refusal;

#[derive(Debug, Clone, Default)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

#[derive(Debug, Clone)]
struct Role {
    cluster: bool,
    namespace: String,
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Binding {
    /// A RoleBinding's namespace; `None`: a ClusterRoleBinding.
    namespace: Option<String>,
    role_cluster: bool,
    role_name: String,
    subjects: Vec<Value>,
}

/// The RBAC objects of some manifests.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    roles: Vec<Role>,
    bindings: Vec<Binding>,
}

/// Who is asking, as the authenticator says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// A ServiceAccount's token: its user name and groups
    /// (staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go).
    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// What a request asks for (requestinfo.go `RequestInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub resource_request: bool,
    pub path: String,
    pub verb: String,
    pub api_group: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One query parameter, decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// requestinfo.go `NewRequestInfo` for `method path?query`.
pub fn request_info(method: &str, path: &str, query: &str) -> Attributes {
    let mut a = Attributes {
        path: path.to_string(),
        verb: method.to_ascii_lowercase(),
        ..Attributes::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => rest,
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
            a.api_group = group.to_string();
            rest
        }
        _ => return a, // not a resource request: discovery, /version, ...
    };
    a.resource_request = true;
    let mut rest = rest;
    // `/watch/...`, the deprecated special verb.
    let special = rest.len() >= 2 && rest[0] == "watch";
    if special {
        a.verb = "watch".into();
        rest = &rest[1..];
    } else {
        a.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .into();
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        a.namespace = rest[1].to_string();
        // `namespaces/{ns}/status` and `/finalize` are subresources of the Namespace.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if let Some(r) = rest.first() {
        a.resource = r.to_string();
    }
    if let Some(n) = rest.get(1) {
        a.name = n.to_string();
    }
    if let Some(s) = rest.get(2) {
        a.subresource = s.to_string();
    }
    if a.name.is_empty() && a.verb == "get" {
        let watch = param(query, "watch")
            .is_some_and(|w| matches!(w.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
        a.verb = if watch { "watch" } else { "list" }.into();
        // The name a `metadata.name=` field selector requires, for resourceNames; the verb stays.
        if let Some(fs) = param(query, "fieldSelector") {
            for term in fs.split(',') {
                let name = term
                    .strip_prefix("metadata.name==")
                    .or_else(|| term.strip_prefix("metadata.name="));
                if let Some(n) = name.filter(|n| !n.is_empty() && !n.contains('/')) {
                    a.name = n.to_string();
                }
            }
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

fn contains_or_star(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

/// helpers.go: `VerbMatches && APIGroupMatches && ResourceMatches && ResourceNameMatches`,
/// or `VerbMatches && NonResourceURLMatches`.
fn rule_allows(rule: &Rule, a: &Attributes) -> bool {
    if !contains_or_star(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule.non_resource_urls.iter().any(|u| {
            u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource = rule.resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    let name = rule.resource_names.is_empty() || rule.resource_names.contains(&a.name);
    contains_or_star(&rule.api_groups, &a.api_group) && resource && name
}

impl Rbac {
    /// The RBAC objects among `yaml`'s documents (the rest are skipped), plus the bootstrap
    /// discovery role.
    pub fn from_yaml(yaml: &str) -> Result<Rbac, String> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| e.to_string())?;
        let mut rbac = Rbac::default();
        rbac.roles.push(Role {
            cluster: true,
            namespace: String::new(),
            name: "system:discovery".into(),
            rules: vec![Rule {
                verbs: vec!["get".into()],
                non_resource_urls: [
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/version",
                    "/version/",
                ]
                .map(String::from)
                .to_vec(),
                ..Rule::default()
            }],
        });
        rbac.bindings.push(Binding {
            namespace: None,
            role_cluster: true,
            role_name: "system:discovery".into(),
            subjects: vec![serde_json::json!({"kind": "Group", "name": "system:authenticated"})],
        });
        for doc in docs {
            if doc["apiVersion"] != "rbac.authorization.k8s.io/v1" {
                continue;
            }
            let namespace = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
            match doc["kind"].as_str() {
                Some(kind @ ("Role" | "ClusterRole")) => rbac.roles.push(Role {
                    cluster: kind == "ClusterRole",
                    namespace,
                    name,
                    rules: doc["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| Rule {
                            verbs: strings(&r["verbs"]),
                            api_groups: strings(&r["apiGroups"]),
                            resources: strings(&r["resources"]),
                            resource_names: strings(&r["resourceNames"]),
                            non_resource_urls: strings(&r["nonResourceURLs"]),
                        })
                        .collect(),
                }),
                Some(kind @ ("RoleBinding" | "ClusterRoleBinding")) => {
                    rbac.bindings.push(Binding {
                        namespace: (kind == "RoleBinding").then_some(namespace),
                        role_cluster: doc["roleRef"]["kind"] == "ClusterRole",
                        role_name: doc["roleRef"]["name"].as_str().unwrap_or("").to_string(),
                        subjects: doc["subjects"].as_array().cloned().unwrap_or_default(),
                    })
                }
                _ => {}
            }
        }
        Ok(rbac)
    }

    /// rule.go `appliesToUser`.
    fn applies_to(subject: &Value, user: &User) -> bool {
        let name = subject["name"].as_str().unwrap_or("");
        match subject["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = subject["namespace"].as_str().unwrap_or("");
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    }

    /// rbac.go `Authorize`: whether any rule bound to `user` allows `a`.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        self.bindings.iter().any(|b| {
            let in_scope = match &b.namespace {
                None => true,
                Some(ns) => *ns == a.namespace,
            };
            in_scope
                && b.subjects.iter().any(|s| Rbac::applies_to(s, user))
                && self
                    .roles
                    .iter()
                    .filter(|r| r.cluster == b.role_cluster && r.name == b.role_name)
                    // A RoleBinding's Role is the one of its own namespace.
                    .filter(|r| r.cluster || Some(&r.namespace) == b.namespace.as_ref())
                    .any(|r| r.rules.iter().any(|rule| rule_allows(rule, a)))
        })
    }

    /// [`Self::allows`], else the 403 the API server answers.
    pub fn check(&self, user: &User, a: &Attributes) -> Result<(), Refusal> {
        if self.allows(user, a) {
            return Ok(());
        }
        Err(forbidden(user, a))
    }
}

/// errors.go `Forbidden` with `forbiddenMessage`, inside `NewForbidden`'s wording.
pub fn forbidden(user: &User, a: &Attributes) -> Refusal {
    let who = &user.name;
    let message = if !a.resource_request {
        format!(
            "forbidden: User {who:?} cannot {} path {:?}",
            a.verb, a.path
        )
    } else {
        let mut resource = a.resource.clone();
        if !a.subresource.is_empty() {
            resource = format!("{resource}/{}", a.subresource);
        }
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        let why = format!(
            "User {who:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            a.verb, a.api_group
        );
        // GroupResource.String(): "resource.group", or "resource" in the core group.
        let gr = if a.api_group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.api_group)
        };
        if a.name.is_empty() {
            format!("{gr} is forbidden: {why}")
        } else {
            format!("{gr} {:?} is forbidden: {why}", a.name)
        }
    };
    Refusal {
        code: 403,
        reason: "Forbidden",
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: prepuller, namespace: prepuller}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: prepuller}
rules:
  - {apiGroups: [""], resources: ["nodes"], verbs: ["get", "watch", "patch"]}
  - {apiGroups: [""], resources: ["nodes/status"], verbs: ["patch"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prepuller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prepuller}
subjects: [{kind: ServiceAccount, name: prepuller, namespace: prepuller}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secrets, namespace: prepuller}
rules:
  - {apiGroups: [""], resources: ["secrets"], resourceNames: ["regcred"], verbs: ["get"]}
  - {apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["get", "update"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: secrets, namespace: prepuller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secrets}
subjects: [{kind: ServiceAccount, name: prepuller, namespace: prepuller}]
"#;

    fn allowed(method: &str, path: &str, query: &str) -> Result<(), String> {
        let rbac = Rbac::from_yaml(RBAC).unwrap();
        let sa = User::service_account("prepuller", "prepuller");
        rbac.check(&sa, &request_info(method, path, query))
            .map_err(|e| e.message)
    }

    #[test]
    fn requests_are_authorized_by_verb_resource_subresource_name_and_namespace() {
        allowed("GET", "/api/v1/nodes/node-a", "").unwrap();
        allowed(
            "GET",
            "/api/v1/nodes",
            "watch=true&fieldSelector=metadata.name%3Dnode-a",
        )
        .unwrap();
        allowed("PATCH", "/api/v1/nodes/node-a/status", "").unwrap();
        allowed("GET", "/api/v1/namespaces/prepuller/secrets/regcred", "").unwrap();
        allowed(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/prepuller/leases/x",
            "",
        )
        .unwrap();
        allowed("GET", "/version", "").unwrap();

        // A collection GET is `list`, even for one name.
        assert_eq!(
            allowed(
                "GET",
                "/api/v1/nodes",
                "fieldSelector=metadata.name%3Dnode-a"
            )
            .unwrap_err(),
            "nodes \"node-a\" is forbidden: User \"system:serviceaccount:prepuller:prepuller\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        // `nodes` (get) does not grant `nodes/status`.
        assert_eq!(
            allowed("GET", "/api/v1/nodes/node-a/status", "").unwrap_err(),
            "nodes \"node-a\" is forbidden: User \"system:serviceaccount:prepuller:prepuller\" cannot get resource \"nodes/status\" in API group \"\" at the cluster scope"
        );
        // resourceNames.
        assert_eq!(
            allowed("GET", "/api/v1/namespaces/prepuller/secrets/other", "").unwrap_err(),
            "secrets \"other\" is forbidden: User \"system:serviceaccount:prepuller:prepuller\" cannot get resource \"secrets\" in API group \"\" in the namespace \"prepuller\""
        );
        // A Role binds in its own namespace only.
        assert!(allowed("GET", "/api/v1/namespaces/redis/secrets/regcred", "").is_err());
        assert_eq!(
            allowed(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/prepuller/leases",
                ""
            )
            .unwrap_err(),
            "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:prepuller:prepuller\" cannot create resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"prepuller\""
        );
        // Another ServiceAccount gets nothing.
        let rbac = Rbac::from_yaml(RBAC).unwrap();
        let other = User::service_account("default", "prepuller");
        assert!(!rbac.allows(&other, &request_info("GET", "/api/v1/nodes/node-a", "")));
    }
}
