//! The fleet pull budget at scale: `FLEET_BENCH_NODES` (default 200, 1,000 and 5,000) simulated
//! nodes warm up at once on one registry with `maxConcurrentNodes: 50`, each pulling for 30 to
//! 90 s, on the real coordination code (`fleet::Coordinator`) against the in-memory Lease API
//! (`fleet::fake`), on a paused clock. Prints API writes/s during the warm-up and in the hour
//! after (steady state), lists/s and the peak number of nodes pulling. `make bench` runs it.

use std::time::Instant;

use prepuller::fleet::fake::simulate;

const SLOTS: u32 = 50;

fn main() {
    let sizes: Vec<usize> = match std::env::var("FLEET_BENCH_NODES") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![200, 1_000, 5_000],
    };
    println!(
        "| nodes | `maxConcurrentNodes` | warm-up (virtual) | peak pulling | API writes | of them 409s | writes/s | writes per node | lists/s | watches opened | API calls in the next hour | simulated in |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
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
        assert!(
            r.peak_pulling <= SLOTS as usize,
            "more nodes pulled than slots"
        );
    }
}
