//! What proof-of-work costs (`[onion] pow`, docs/onion.md): the time of one Equi-X solve
//! and one verification, with hashx's compiler and with its interpreter. arti compiles each
//! puzzle's hash program to machine code when it can and interprets it otherwise; under the
//! shipped systemd unit (`MemoryDenyWriteExecute=yes`) the compiler cannot map its code
//! executable, so arti interprets. `POW_BENCH_MDWE=1` puts this process under the kernel's
//! equivalent (`prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`, Linux 6.3+) first, to show
//! that the compiler then falls back by itself.
//!
//! A client at effort E solves about E puzzles on average; the service verifies one per
//! introduction it serves.
//!
//!     cargo bench -p smtorp-onion --bench pow
//!     POW_BENCH_MDWE=1 cargo bench -p smtorp-onion --bench pow

use std::time::{Duration, Instant};

use equix::{EquiXBuilder, RuntimeOption, SolverMemory};

/// Puzzles per mode (each a different challenge).
const PUZZLES: u32 = 40;

fn main() {
    if std::env::var_os("POW_BENCH_MDWE").is_some() {
        // PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1.
        // SAFETY: prctl with integer arguments only; it changes this process's own policy.
        // (The only unsafe code in the workspace: nix has no wrapper for PR_SET_MDWE.)
        #[allow(unsafe_code)]
        let r = unsafe { nix::libc::prctl(65, 1, 0, 0, 0) };
        assert_eq!(r, 0, "PR_SET_MDWE: {}", std::io::Error::last_os_error());
        println!("memory-deny-write-execute: on (PR_SET_MDWE)");
    }
    for (name, option) in [
        ("try-compile (arti's choice)", RuntimeOption::TryCompile),
        ("interpret-only", RuntimeOption::InterpretOnly),
    ] {
        let mut builder = EquiXBuilder::new();
        builder.runtime(option);
        let mut memory = SolverMemory::new();
        let (mut solve, mut verify, mut solved, mut runtime) =
            (Duration::ZERO, Duration::ZERO, 0u32, None);
        for i in 0..PUZZLES {
            let challenge = [b"smtorp pow bench ".as_slice(), &i.to_le_bytes()].concat();
            let Ok(equix) = builder.build(&challenge) else {
                continue; // about 1 in 20 seeds gives no usable program
            };
            runtime = Some(equix.runtime());
            let t = Instant::now();
            let solutions = equix.solve_with_memory(&mut memory);
            solve += t.elapsed();
            solved += 1;
            if let Some(solution) = solutions.first() {
                let t = Instant::now();
                assert!(equix.verify(solution).is_ok(), "a solution verifies");
                verify += t.elapsed();
            }
        }
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(solved.max(1));
        println!(
            "{name:28} runtime {:?}: {solved} puzzles, {:.2} ms per solve, {:.3} ms per verify",
            runtime,
            per(solve),
            per(verify)
        );
    }
}
