//! The CUDA kernels' logic, executed on the CPU: `cuda_emu/gen_kernels.py` turns the CUDA
//! prelude + every family's `.cu` (okapi-kernels' `FAMILIES`, written out in the kernels/src
//! layout) into a C++ header for the small
//! CUDA emulator `cuda_emu/emu.h` (one OS thread per CUDA thread, barriers for __syncthreads and
//! warp collectives, mma.sync m16n8k16 bf16 per the PTX fragment layout, NaN-filled dynamic shared
//! memory); the `cuda_emu/t_*.cpp` programs launch every kernel the backend launches with the
//! host's grid/block/shared-memory arithmetic and compare with double-precision references written
//! from the CPU kernels' semantics (kernels/src/<op>/mod.rs). What the emulator cannot see (real
//! GPU scheduling races, expf accuracy, shared-memory limits, timing) is listed in emu.h.
//! Needs python3 and a C++20 compiler (g++, c++ or clang++), no GPU. Without them the test prints
//! a loud line and passes, unless `OKAPI_REQUIRE_CUDA_EMU=1` (CI).
#![cfg(feature = "cuda")]

use okapi_kernels::{CUDA_PRELUDE, FAMILIES};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The test programs and their arguments (`t_mm 0` = matmul_f32, `t_mm 1` = matmul_bf16_mma,
/// `t_attn 1` = the attention kernels' bf16 mode). Longest first, for the runner.
const RUNS: &[(&str, &[&str])] = &[
    ("t_rows", &[]),
    ("t_mm", &["1"]),
    ("t_misc", &[]),
    ("t_attn", &["1"]),
    ("t_attn", &["0"]),
    ("t_mm", &["0"]),
];
/// A program still running after this long is killed: most likely a deadlock (a warp collective
/// or __syncthreads not reached by every thread).
const TIMEOUT: Duration = Duration::from_secs(300);

fn emu_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu")
}
/// Writes the prelude and every family's `.cu` from okapi-kernels into `dir/src` in the
/// kernels/src layout (`cuda_prelude.cuh`, `<family>/<family>.cu`), the generator's input.
fn kernels_src(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("cuda_prelude.cuh"), CUDA_PRELUDE).unwrap();
    for f in FAMILIES {
        std::fs::create_dir_all(src.join(f.name)).unwrap();
        std::fs::write(src.join(f.name).join(format!("{}.cu", f.name)), f.cuda).unwrap();
    }
    src
}

/// Every CUDA entry point of every family.
fn all_kernels() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.cuda_kernels.iter().copied()).collect()
}
fn work_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
fn runs(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
/// Skips loudly, or fails under OKAPI_REQUIRE_CUDA_EMU=1.
fn missing(what: &str) {
    eprintln!("!!!!!!!! cuda_emu: {what} — the CUDA kernels were NOT emulated !!!!!!!!");
    if std::env::var("OKAPI_REQUIRE_CUDA_EMU").as_deref() == Ok("1") {
        panic!("OKAPI_REQUIRE_CUDA_EMU=1 but {what}");
    }
}
fn generate(src: &Path, out: &Path) -> Output {
    Command::new("python3")
        .arg(emu_dir().join("gen_kernels.py"))
        .arg(src)
        .arg(out)
        .output()
        .expect("python3 gen_kernels.py")
}
/// Runs `cmd`, killing it after TIMEOUT; (output, timed out).
fn run_with_timeout(mut cmd: Command) -> (Output, bool) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let id = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let t0 = Instant::now();
        while !d2.load(std::sync::atomic::Ordering::SeqCst) {
            if t0.elapsed() > TIMEOUT {
                let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, watchdog.join().unwrap())
}

#[test]
fn cuda_kernels_match_the_references_under_cpu_emulation() {
    let t0 = Instant::now();
    if !runs("python3") {
        return missing("NO python3 (runs cuda_emu/gen_kernels.py)");
    }
    let Some(cxx) = ["g++", "c++", "clang++"].into_iter().find(|c| runs(c)) else {
        return missing("NO C++ COMPILER (g++, c++ or clang++)");
    };
    let dir = work_dir("cuda_emu");
    let g = generate(&kernels_src(&dir), &dir.join("kernels.h"));
    assert!(
        g.status.success(),
        "cuda_emu: gen_kernels.py failed:\n{}",
        text(&g)
    );
    eprint!("cuda_emu: {}", String::from_utf8_lossy(&g.stdout));

    // Compile every program in parallel.
    let programs: Vec<&str> = {
        let mut p: Vec<&str> = RUNS.iter().map(|(p, _)| *p).collect();
        p.sort();
        p.dedup();
        p
    };
    let compiles: Vec<(&str, std::process::Child)> = programs
        .iter()
        .map(|p| {
            let child = Command::new(cxx)
                .args(["-std=c++20", "-O2", "-pthread", "-I"])
                .arg(&dir)
                .arg("-I")
                .arg(emu_dir())
                .arg(emu_dir().join(format!("{p}.cpp")))
                .arg("-o")
                .arg(dir.join(p))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cuda_emu: spawn {cxx}: {e}"));
            (*p, child)
        })
        .collect();
    let mut failures = Vec::new();
    for (p, child) in compiles {
        let o = child.wait_with_output().unwrap();
        if !o.status.success() {
            failures.push(format!("{cxx} {p}.cpp failed:\n{}", text(&o)));
        }
    }
    assert!(
        failures.is_empty(),
        "cuda_emu: compile failure(s):\n{}",
        failures.join("\n")
    );
    eprintln!(
        "cuda_emu: {} programs compiled with {cxx} in {:.1} s",
        programs.len(),
        t0.elapsed().as_secs_f64()
    );

    // Run them, one per two cores: each program is itself hundreds of OS threads contending on
    // barriers, so two at once on a 2-core machine only add context switches (measured: slower).
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((p, args)) = RUNS.get(i) else { return };
                let t = Instant::now();
                let mut cmd = Command::new(dir.join(p));
                cmd.args(*args);
                let (o, timed_out) = run_with_timeout(cmd);
                results.lock().unwrap().push((
                    format!("{p} {}", args.join(" ")),
                    o,
                    timed_out,
                    t.elapsed(),
                ));
            });
        }
    });
    for (name, o, timed_out, took) in results.into_inner().unwrap() {
        let out = text(&o);
        let checks = out.lines().filter(|l| l.starts_with("ok ")).count();
        if o.status.success() && !timed_out {
            eprintln!(
                "cuda_emu: {name}: {checks} checks ok ({:.1} s)",
                took.as_secs_f64()
            );
            continue;
        }
        let fails: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with("emu:"))
            .collect();
        let why = if timed_out {
            format!("killed after {TIMEOUT:?} (deadlock?)")
        } else {
            format!("{}", o.status)
        };
        let detail = if fails.is_empty() {
            out.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            fails.join("\n")
        };
        failures.push(format!(
            "{name}: {why}, {checks} checks ok; failing:\n{detail}"
        ));
    }
    eprintln!("cuda_emu: total {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "cuda_emu: {} program(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every kernel the backend launches is launched by some emulator test program.
#[test]
fn every_launched_kernel_is_emulated() {
    let sources: String = std::fs::read_dir(emu_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("t_")
                && p.extension().is_some_and(|x| x == "cpp")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let missing: Vec<&str> = all_kernels()
        .into_iter()
        .filter(|k| !sources.contains(&format!("launch({k},")))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels no runtime/tests/cuda_emu/t_*.cpp launches: {missing:?}"
    );
}

/// The generator refuses what the emulator cannot model (here: an unknown asm block, __ldg).
#[test]
fn the_generator_rejects_untranslatable_constructs() {
    if !runs("python3") {
        return missing("NO python3 (runs cuda_emu/gen_kernels.py)");
    }
    let dir = work_dir("cuda_emu_reject");
    std::fs::create_dir_all(dir.join("src/bad")).unwrap();
    std::fs::write(dir.join("src/cuda_prelude.cuh"), CUDA_PRELUDE).unwrap();
    std::fs::write(
        dir.join("src/bad/bad.cu"),
        "// asm and __ldg in a comment are fine\nextern \"C\" __global__ void k(float* x) {\n    asm volatile(\"bar.sync 0;\");\n    x[0] = __ldg(x);\n}\n",
    )
    .unwrap();
    let o = generate(&dir.join("src"), &dir.join("kernels.h"));
    let out = text(&o);
    assert!(
        !o.status.success(),
        "gen_kernels.py accepted an unknown asm block:\n{out}"
    );
    assert!(
        out.contains("bad/bad.cu:3")
            && out.contains("asm")
            && out.contains("bad/bad.cu:4")
            && out.contains("__ldg"),
        "{out}"
    );
    assert!(!dir.join("kernels.h").exists());
}
