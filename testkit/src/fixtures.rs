//! Documents the tests write or read: docker configs, Node objects from the fake API.

/// A docker config (`{"auths": …}`) with one `auth` entry per (key, user, password).
pub fn dockerconfigjson(entries: &[(&str, &str, &str)]) -> String {
    use base64::Engine;
    let auths: Vec<String> = entries
        .iter()
        .map(|(key, user, password)| {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("\"{key}\": {{\"auth\": \"{auth}\"}}")
        })
        .collect();
    format!("{{\"auths\": {{{}}}}}", auths.join(", "))
}

/// A Node's `ImagesPrePulled` condition (as JSON from the fake API), or null.
pub fn images_prepulled_condition(node: &serde_json::Value) -> serde_json::Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ImagesPrePulled"))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The keys of a Node's taints (as JSON from the fake API).
pub fn taint_keys(node: &serde_json::Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["key"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// This machine's boot id, which the agent records on the Node when it removes the startup taint.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}
