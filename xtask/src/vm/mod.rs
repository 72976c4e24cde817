//! `cargo xtask vm-test`: every root integration test of stress-user on Debian's 5.10, 6.1 and
//! 6.12 cloud kernels with cgroup v2, in QEMU with TCG (nested KVM dies on these machines). Kernels
//! come from Debian's archive and are cached; one initramfs carries busybox, the test binaries,
//! oomlab and the glibc they load; results come back per test over the serial console.
//!
//! Here: the command's arguments and the order of the run. `plan` builds the tests, `initramfs`
//! packs them, `kernel` fetches the images, `qemu` boots each guest and reads its console,
//! `results` says what each test came to and `matrix` turns the doctor outputs into the table.

mod captures;
mod initramfs;
mod kernel;
mod matrix;
mod plan;
mod qemu;
mod results;

use std::{
    fs,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use self::{
    initramfs::{build_initramfs, GuestExtras},
    kernel::{kernel_image, Series, SERIES},
    matrix::{host_doctor, write_matrix},
    plan::{build_tests, plan, Built, PlannedTest},
    qemu::Guest,
    results::{print_results, VmRun},
};
use crate::target_dir;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KernelChoice {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

impl KernelChoice {
    /// The series names this choice boots.
    pub(crate) fn names(self) -> Vec<&'static str> {
        self.series().iter().map(|s| s.name).collect()
    }

    fn series(self) -> Vec<Series> {
        let only = match self {
            KernelChoice::V5_10 => "5.10",
            KernelChoice::V6_1 => "6.1",
            KernelChoice::V6_12 => "6.12",
            KernelChoice::All => return SERIES.to_vec(),
        };
        SERIES.into_iter().filter(|s| s.name == only).collect()
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct VmTestArgs {
    /// Which Debian kernel(s) to boot; `all` runs them side by side (one vCPU each, as many at
    /// once as the host has cores).
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Only these integration test binaries (file names in tests/ without `.rs`); default all.
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Build the test binaries with `--release` (default: the debug build `cargo xtask test` made).
    #[arg(long)]
    pub release: bool,
    /// Seconds one test may run inside the guest before it is killed and counted as failed.
    #[arg(long, default_value_t = 240)]
    pub test_timeout: u64,
    /// Also rewrite README.md's kernel matrix from the doctor outputs kept under target/vm/.
    #[arg(long)]
    pub update_readme: bool,
    /// Do not boot anything: regenerate target/vm/kernel-matrix.md (and README.md with
    /// --update-readme) from the doctor outputs of earlier runs.
    #[arg(long)]
    pub matrix_only: bool,
    /// Also save the kernel-log captures the explain test printed on each guest's console to
    /// tests/data/explain/<kernel>/ (run with `--test explain`).
    #[arg(long)]
    pub save_captures: bool,
}

impl VmTestArgs {
    /// What `cargo xtask test` runs after the host tests.
    pub(crate) fn all_kernels() -> Self {
        VmTestArgs {
            kernel: KernelChoice::All,
            tests: Vec::new(),
            release: false,
            test_timeout: 240,
            update_readme: false,
            matrix_only: false,
            save_captures: false,
        }
    }
}

pub(crate) fn run(args: &VmTestArgs) -> Result<()> {
    let out = target_dir().join("vm");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if args.matrix_only {
        return write_matrix(&out, args.update_readme);
    }
    let start = Instant::now();

    let built = build_tests(args.release)?;
    let plan = plan(&built, &args.tests)?;
    let extras = GuestExtras {
        test_timeout: args.test_timeout,
        test_args: String::new(),
        tools: Vec::new(),
    };
    host_doctor(&built.oomlab, &out.join("host"));
    let series = args.kernel.series();
    let runs = boot_plan(&out, &built, &plan, &extras, &series, start)?;

    let mut failed = 0;
    let mut errors = Vec::new();
    for (s, run) in runs {
        match run {
            Ok(run) => {
                print_results(&s, &run);
                failed += run.failed().count();
            }
            Err(e) => errors.push(format!("{s}: {e:#}")),
        }
    }
    write_matrix(&out, args.update_readme)?;
    if args.save_captures {
        let names: Vec<&str> = series.iter().map(|s| s.name).collect();
        captures::save(&out, &names)?;
    }
    eprintln!(
        "xtask vm-test: finished in {:.0} s; artefacts in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    if !errors.is_empty() {
        bail!("VM run failed: {}", errors.join("; "));
    }
    if failed > 0 {
        bail!(
            "{failed} test(s) failed in the VMs (console logs under {})",
            out.display()
        );
    }
    Ok(())
}

/// The test each kernel is booted for once more with `psi=0`: PSI off is a boot-time state, so
/// only a boot can show how oomlab refuses `--pressure` there.
const PSI_OFF_TEST: (&str, &str) = ("inject_bad_input", "pressure_is_refused_where_psi_is_off");

/// Packs `plan` into one initramfs under `out` and boots it on each of `series`, side by side,
/// and, when the plan holds [`PSI_OFF_TEST`], each kernel again with `psi=0` for that test
/// alone (artefacts in target/vm/<series>-psi0/). One run (or why it failed) per boot, labelled,
/// the matrix's boots first in the order of `series`.
fn boot_plan(
    out: &std::path::Path,
    built: &Built,
    plan: &[PlannedTest],
    extras: &GuestExtras,
    series: &[Series],
    start: Instant,
) -> Result<Vec<(String, Result<VmRun>)>> {
    let initrd = out.join("initramfs.cpio");
    build_initramfs(&out.join("initramfs"), &initrd, &built.oomlab, plan, extras)?;
    eprintln!(
        "xtask vm-test: {} tests from {} binaries, initramfs {} MiB ({:.0} s so far)",
        plan.len(),
        built.tests.len(),
        fs::metadata(&initrd)?.len() >> 20,
        start.elapsed().as_secs_f64()
    );
    let mut kernels = Vec::new();
    for s in series {
        kernels.push((s.name, kernel_image(s)?));
    }
    let expected: Vec<(String, String)> = plan
        .iter()
        .map(|p| (p.group.clone(), p.test.clone()))
        .collect();
    let mut guests: Vec<Guest<'_>> = kernels
        .iter()
        .map(|(s, image)| Guest {
            series: s,
            image,
            initrd: &initrd,
            dir: out.join(s),
            expected: &expected,
            test_timeout: extras.test_timeout,
            extra_cmdline: "",
        })
        .collect();
    let psi_off_expected = [(PSI_OFF_TEST.0.to_string(), PSI_OFF_TEST.1.to_string())];
    let psi_off_cmdline = format!("psi=0 oomlab.only={}", PSI_OFF_TEST.1);
    if expected.contains(&psi_off_expected[0]) {
        for (s, image) in &kernels {
            guests.push(Guest {
                series: s,
                image,
                initrd: &initrd,
                dir: out.join(format!("{s}-psi0")),
                expected: &psi_off_expected,
                test_timeout: extras.test_timeout,
                extra_cmdline: &psi_off_cmdline,
            });
        }
    }
    let labels: Vec<String> = guests.iter().map(Guest::label).collect();
    Ok(labels.into_iter().zip(boot_side_by_side(&guests)).collect())
}

/// A benchmark's guest half: the `#[ignore]`d test `test` of the integration test binary
/// `group`, built with `--release`, run alone with `--ignored` on each kernel of `kernel`
/// (artefacts under target/vm-bench/), with `tools` (a peer such as stress-ng) in the guest.
/// Per kernel: its series name and what the test printed (or why it did not run or failed).
pub(crate) fn run_bench_in_guests(
    group: &str,
    test: &str,
    kernel: KernelChoice,
    timeout_s: u64,
    tools: Vec<std::path::PathBuf>,
) -> Result<Vec<(&'static str, Result<String>)>> {
    let start = Instant::now();
    let out = target_dir().join("vm-bench");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let built = build_tests(true)?;
    let plan = plan::ignored_test(&built, group, test)?;
    let extras = GuestExtras {
        test_timeout: timeout_s,
        test_args: "--ignored".into(),
        tools,
    };
    let series = kernel.series();
    let runs = boot_plan(&out, &built, &plan, &extras, &series, start)?;
    Ok(series
        .iter()
        .zip(runs.into_iter().map(|(_, run)| run))
        .map(|(s, run)| {
            let output = run.and_then(|run| {
                let r = run
                    .results
                    .into_iter()
                    .next()
                    .context("the guest reported no test")?;
                match r.outcome {
                    results::Outcome::Passed => Ok(r.output),
                    other => bail!(
                        "{other} (console: {})",
                        out.join(s.name).join("console.log").display()
                    ),
                }
            });
            (s.name, output)
        })
        .collect())
}

/// One vCPU per guest, and never more guests at once than the host has cores: the tests'
/// stages are timed, and an overcommitted TCG guest misses them. The next guest starts as soon
/// as one finishes; results come back in the order of `guests`.
fn boot_side_by_side(guests: &[Guest<'_>]) -> Vec<Result<VmRun>> {
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let next = AtomicUsize::new(0);
    let runs: Mutex<Vec<Option<Result<VmRun>>>> = Mutex::new(guests.iter().map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..cores.min(guests.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(guest) = guests.get(i) else {
                    return;
                };
                let run = guest.boot();
                if let Ok(mut runs) = runs.lock() {
                    runs[i] = Some(run);
                }
            });
        }
    });
    runs.into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("VM thread panicked"))))
        .collect()
}
