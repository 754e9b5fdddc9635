//! Runs every collective of [`keel_dist::Mpi`] and the environment gate, and writes what each
//! rank got to `OUT_DIR/rank-R.json`. keel-dist's `mpirun` test (`tests/mpirun.rs`) starts it
//! with `mpirun -np 2` and checks the files; it is also a quick check of a cluster's MPI:
//!
//! ```text
//! mpirun -np 2 target/debug/examples/collectives OUT_DIR [SKEWED_RANK]
//! ```
//!
//! With `SKEWED_RANK`, that rank reports another numpy version in the second gate.

use std::path::PathBuf;

use keel_dist::{Collective, Launch, Mpi, RankFacts, gate};
use serde_json::json;

fn facts(rank: usize, skewed: Option<usize>) -> RankFacts {
    let numpy = if skewed == Some(rank) {
        "2.0.0 py312_0"
    } else {
        "1.26.4 py312_0"
    };
    RankFacts {
        rank,
        host: format!("node-{rank}"),
        fingerprint_root: Some("b3-root".to_string()),
        packages: [("numpy", numpy), ("python", "3.12.3 h1_0")]
            .into_iter()
            .map(|(name, version)| (name.to_string(), version.to_string()))
            .collect(),
        driver: None,
        cuda: None,
        gpus: Vec::new(),
        keel_version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: "cfg-1".to_string(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: collectives OUT_DIR [SKEWED_RANK]")?,
    );
    let skewed: Option<usize> = args
        .next()
        .map(|arg| arg.to_string_lossy().parse())
        .transpose()?;

    let launch = Launch::detect()?;
    let mpi = Mpi::init()?;
    launch.verify_world(&mpi)?;
    let world: &dyn Collective = &mpi;
    let (rank, size) = (world.rank(), world.size());
    let r = rank as f32;

    let mut sum_f32 = vec![r + 1.0, 2.0 * (r + 1.0), 0.5];
    world.all_reduce_sum_f32(&mut sum_f32)?;
    let mut mean_f32 = vec![r, 10.0];
    world.all_reduce_mean_f32(&mut mean_f32)?;
    let mut sum_f64 = vec![rank as f64 + 0.25, -1.0];
    world.all_reduce_sum_f64(&mut sum_f64)?;
    let max = world.all_reduce_max_u64(rank as u64 * 10 + 7)?;
    let stop_last = world.all_reduce_or(rank == size - 1)?;
    let stop_none = world.all_reduce_or(false)?;

    // From the last rank; the others start with a longer buffer of other bytes.
    let root = size - 1;
    let mut broadcast: Vec<u8> = if rank == root {
        (0..3000u32).map(|i| (i % 251) as u8).collect()
    } else {
        vec![0xaa; 5000]
    };
    world.broadcast_bytes(root, &mut broadcast)?;
    let mut broadcast_empty = if rank == 0 { Vec::new() } else { vec![1, 2, 3] };
    world.broadcast_bytes(0, &mut broadcast_empty)?;

    // Rank r sends 3r bytes of value r: rank 0 sends nothing.
    let mine = vec![rank as u8; rank * 3];
    let gathered = world.gather_bytes(0, &mine)?;
    let all_gathered = world.all_gather_bytes(&mine)?;
    // Every rank sends nothing.
    let gathered_empty = world.gather_bytes(0, &[])?;
    // Rank 0 (the root) sends one byte, every other rank nothing.
    let only_root: &[u8] = if world.rank() == 0 { &[7] } else { &[] };
    let gathered_only_root = world.gather_bytes(0, only_root)?;
    let all_gathered_only_root = world.all_gather_bytes(only_root)?;
    let all_gathered_empty = world.all_gather_bytes(&[])?;
    world.barrier()?;

    let uniform = gate(world, &facts(rank, None))?;
    let skewed = gate(world, &facts(rank, skewed))?;

    let result = json!({
        "rank": rank,
        "size": size,
        "launch": launch,
        "sum_f32": sum_f32,
        "mean_f32": mean_f32,
        "sum_f64": sum_f64,
        "max": max,
        "stop_last": stop_last,
        "stop_none": stop_none,
        "broadcast": broadcast,
        "broadcast_empty": broadcast_empty,
        "gathered": gathered,
        "all_gathered": all_gathered,
        "gathered_empty": gathered_empty,
        "gathered_only_root": gathered_only_root,
        "all_gathered_only_root": all_gathered_only_root,
        "all_gathered_empty": all_gathered_empty,
        "uniform": { "is_uniform": uniform.is_uniform(), "text": uniform.to_string(), "report": uniform },
        "skewed": { "is_uniform": skewed.is_uniform(), "text": skewed.to_string(), "report": skewed },
    });
    fs_err::write(
        out.join(format!("rank-{rank}.json")),
        serde_json::to_vec_pretty(&result)?,
    )?;
    Ok(())
}
