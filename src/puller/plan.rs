//! What a run has to do for each declared image, given one ListImages answer: nothing (it is
//! there), fail at once (`Never` and absent), or pull.

use std::collections::HashMap;

use crate::config::{ImageSpec, PullPolicy};
use crate::runtime::ImageInfo;

/// The runtime's images, indexed once by the names CRI reports (tags, repo digests, ids): each
/// declared image is then one lookup, not a scan of the runtime's list.
pub struct PresentImages<'a> {
    by_name: HashMap<&'a str, &'a ImageInfo>,
}

impl<'a> PresentImages<'a> {
    pub fn new(present: &'a [ImageInfo]) -> Self {
        let mut by_name = HashMap::with_capacity(present.len() * 3);
        for info in present {
            for name in info.repo_tags.iter().chain(&info.repo_digests) {
                by_name.insert(name.as_str(), info);
            }
            by_name.entry(info.id.as_str()).or_insert(info);
        }
        PresentImages { by_name }
    }

    /// The image `spec` names, if the runtime has it: by repo digest when pinned, else by tag.
    pub fn find(&self, spec: &ImageSpec) -> Option<&'a ImageInfo> {
        let key = match spec.reference.digest() {
            Some(digest) => format!("{}@{digest}", spec.reference.name()),
            None => spec.reference.pull_ref(),
        };
        self.by_name.get(key.as_str()).copied()
    }
}

/// What one run does for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan<'a> {
    /// There already, and the policy does not ask for a pull.
    Present(&'a ImageInfo),
    /// `pullPolicy: Never` and absent: fails without a pull.
    NotPresent,
    /// Queued for a pull; `found` is what the runtime has now, if anything (`Always`).
    Pull { found: Option<&'a ImageInfo> },
}

impl<'a> Plan<'a> {
    pub(crate) fn for_image(spec: &ImageSpec, present: &PresentImages<'a>) -> Self {
        let found = present.find(spec);
        match (spec.policy, found) {
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(info)) => Plan::Present(info),
            (PullPolicy::Never, None) => Plan::NotPresent,
            (PullPolicy::Always | PullPolicy::IfNotPresent, _) => Plan::Pull { found },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn policies_decide_from_one_listing() {
        let d = format!("sha256:{}", "a".repeat(64));
        let present = [
            ImageInfo {
                id: "sha256:1".into(),
                repo_tags: vec!["r.example/a:1".into()],
                repo_digests: vec![format!("r.example/a@{d}")],
                size_bytes: 5,
            },
            ImageInfo {
                id: "sha256:2".into(),
                repo_tags: vec!["r.example/c:1".into()],
                repo_digests: vec![],
                size_bytes: 5,
            },
        ];
        let c = Config::parse(
            &format!(
                "images:\n  - r.example/a:1\n  - r.example/a@{d}\n  - {{image: r.example/c:1, pullPolicy: Always}}\n  - {{image: r.example/b:1, pullPolicy: Never}}\n  - r.example/d:1\n"
            ),
            Path::new("test.yaml"),
        )
        .unwrap();
        let index = PresentImages::new(&present);
        let plans: Vec<Plan> = c
            .images
            .iter()
            .map(|s| Plan::for_image(s, &index))
            .collect();
        assert_eq!(
            plans,
            [
                Plan::Present(&present[0]),
                Plan::Present(&present[0]),
                Plan::Pull {
                    found: Some(&present[1])
                },
                Plan::NotPresent,
                Plan::Pull { found: None },
            ]
        );
    }
}
