//! The agent under a fleet pull budget: it pulls nothing while the budget says wait, shows the
//! wait, costs nothing meanwhile, and pulls at once when the slot arrives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::testing::{setup, state};
use crate::fleet::{FleetAdmit, FleetBudget, FleetRegistry, FleetState};
use crate::status::ImageState;

const R: &str = "r.example";

/// A budget the test opens by hand.
#[derive(Default)]
struct Scripted {
    open: Mutex<bool>,
    asked: AtomicUsize,
    granted: Mutex<Vec<String>>,
    notify: Arc<Notify>,
    released: AtomicUsize,
}

impl Scripted {
    fn grant(&self) {
        *self.open.lock().unwrap() = true;
        self.granted.lock().unwrap().push(R.into());
        self.notify.notify_one();
    }
}

impl FleetBudget for Scripted {
    fn admit(&self, _: &str) -> FleetAdmit {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if *self.open.lock().unwrap() {
            FleetAdmit::Go
        } else {
            FleetAdmit::Wait
        }
    }
    fn take_granted(&self) -> Vec<String> {
        std::mem::take(&mut self.granted.lock().unwrap())
    }
    fn retain(&self, needed: &dyn Fn(&str) -> bool) {
        let mut open = self.open.lock().unwrap();
        if *open && !needed(R) {
            *open = false;
            self.released.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn rate_limited(&self, _: &str, _: Option<Duration>) {}
    fn changed(&self) -> Arc<Notify> {
        self.notify.clone()
    }
    fn registries(&self) -> Vec<FleetRegistry> {
        let open = *self.open.lock().unwrap();
        if !open && self.asked.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        vec![FleetRegistry {
            registry: R.into(),
            state: if open {
                FleetState::Holding
            } else {
                FleetState::Waiting
            },
            slot: open.then_some(1),
            slots: 1,
        }]
    }
    fn release_all(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

#[tokio::test(start_paused = true)]
async fn the_agent_waits_for_its_slot_idle_then_pulls_when_it_arrives() {
    let s = setup("images: [r.example/a:1]");
    s.rt.set_pull_delay(Duration::from_secs(10));
    let budget = Arc::new(Scripted::default());
    let agent = s.agent.with_fleet(Some(budget.clone()));
    let turns = agent.turns.clone();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(agent.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (turns_then, asked_then) = (
        turns.load(Ordering::Relaxed),
        budget.asked.load(Ordering::Relaxed),
    );
    // An hour of waiting: no pull, the wait shown, and no loop turning on its own beyond the
    // periodic pass (resync).
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(s.rt.stats().pulls.is_empty(), "pulled without a slot");
    assert_eq!(state(&s.hub, "r.example/a:1"), ImageState::Waiting);
    let fleet = s.hub.snapshot().fleet.expect("the fleet block");
    assert_eq!(fleet.registries[0].state, FleetState::Waiting);
    let turns_hour = turns.load(Ordering::Relaxed) - turns_then;
    let asked_hour = budget.asked.load(Ordering::Relaxed) - asked_then;
    eprintln!("an hour waiting: {turns_hour} loop turns, {asked_hour} budget checks");
    assert!(
        turns_hour <= 70,
        "{turns_hour} loop turns in an hour of waiting"
    );
    // The slot arrives: the pull starts at once (no resync needed), and the slot is given back
    // when the image is present.
    budget.grant();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(s.rt.stats().pulls.len(), 1);
    assert_eq!(state(&s.hub, "r.example/a:1"), ImageState::Present);
    assert_eq!(budget.released.load(Ordering::Relaxed), 1);
    cancel.cancel();
    run.await.unwrap();
}
