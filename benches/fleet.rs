//! The fleet pull budget at scale: `FLEET_BENCH_NODES` (default 200, 1,000 and 5,000) simulated
//! nodes warm up at once on one registry with `maxConcurrentNodes: 50`, each pulling for 30 to
//! 90 s, on the real coordination code (`fleet::Coordinator`) against the in-memory Lease API
//! (`fleet::fake`), on a paused clock. Prints API writes/s during the warm-up and in the hour
//! after (steady state), lists/s and the peak number of nodes pulling, and exits 1 when one
//! misses the README's bound. `make bench` runs it; `make bench-smoke` (in `make test`) at 1,000
//! nodes. The clock is virtual, so machine load cannot move these figures: the bounds' room is
//! for the random pull times and waits only.

use std::time::Instant;

use prepuller::fleet::fake::{WATCH_TIMEOUT, simulate};
use testkit::goals::Goals;

const SLOTS: u32 = 50;
/// README: "the budget adds under 6 [writes/s] during a warm-up".
const WRITES_PER_SECOND: f64 = 6.0;
/// README: writes per node 6.2 to 6.9 (take, renewals, release, and the 409s of a race lost).
const WRITES_PER_NODE: f64 = 8.0;
/// README: lists/s 0.66 to 0.83, not growing with the waiting nodes (119/s before the watch).
const LISTS_PER_SECOND: f64 = 1.0;
/// Mean pull time of a simulated node (30 to 90 s).
const MEAN_PULL_SECS: f64 = 60.0;

fn main() {
    let sizes: Vec<usize> = match std::env::var("FLEET_BENCH_NODES") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![200, 1_000, 5_000],
    };
    let mut goals = Goals::new();
    println!(
        "| nodes | `maxConcurrentNodes` | warm-up (virtual) | peak pulling | API writes | of them 409s | writes/s | writes per node | lists/s | watches opened | API calls in the next hour | simulated in |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut reports = Vec::new();
    for nodes in sizes {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let wall = Instant::now();
        let r = runtime.block_on(simulate(nodes, SLOTS));
        println!(
            "| {nodes} | {SLOTS} | {:.0} s | {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {:.1} s |",
            r.warm_up.as_secs_f64(),
            r.peak_pulling,
            r.writes,
            r.conflicts,
            r.writes_per_second(),
            r.writes as f64 / nodes as f64,
            r.lists_per_second(),
            r.watches,
            r.idle_calls,
            wall.elapsed().as_secs_f64(),
        );
        reports.push(r);
    }
    for r in reports {
        let n = r.nodes;
        goals.check(
            r.peak_pulling == SLOTS as usize,
            format!(
                "{n} nodes: peak pulling {} = maxConcurrentNodes {SLOTS}",
                r.peak_pulling
            ),
        );
        // Every slot busy but for the hand-overs: within 10 % (and one pull) of the ideal.
        let ideal = n as f64 * MEAN_PULL_SECS / f64::from(SLOTS);
        let warm_up = r.warm_up.as_secs_f64();
        goals.check(
            warm_up <= ideal * 1.1 + 90.0,
            format!(
                "{n} nodes: warm-up {warm_up:.0} s <= {:.0} s (ideal {ideal:.0} s + 10 % + one pull)",
                ideal * 1.1 + 90.0
            ),
        );
        goals.check(
            r.writes_per_second() < WRITES_PER_SECOND,
            format!(
                "{n} nodes: {:.1} writes/s < {WRITES_PER_SECOND}",
                r.writes_per_second()
            ),
        );
        let per_node = r.writes as f64 / n as f64;
        goals.check(
            per_node < WRITES_PER_NODE,
            format!("{n} nodes: {per_node:.1} writes per node < {WRITES_PER_NODE}"),
        );
        goals.check(
            r.lists_per_second() < LISTS_PER_SECOND,
            format!(
                "{n} nodes: {:.2} lists/s < {LISTS_PER_SECOND}",
                r.lists_per_second()
            ),
        );
        // A waiter reopens its watch only when the server ends it (every `WATCH_TIMEOUT`),
        // never more often: at most one watch per node, plus one per timeout of the warm-up.
        let per_node = 1.0 + warm_up / WATCH_TIMEOUT.as_secs_f64();
        let most = (n as f64 * per_node) as usize;
        goals.check(
            r.watches <= most,
            format!(
                "{n} nodes: {} watches opened <= {most} (one per node and per {} s watch)",
                r.watches,
                WATCH_TIMEOUT.as_secs()
            ),
        );
        goals.check(
            r.idle_calls == 0,
            format!("{n} nodes: {} API calls in the hour after", r.idle_calls),
        );
    }
    goals.finish();
}
