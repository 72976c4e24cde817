//! `oomlab doctor [--output json]`: what [`crate::doctor`] found, as aligned lines or one JSON
//! document; the exit code says whether oomlab can run here.

use crate::{
    cgroup::{Hierarchy, PsiState},
    cli::exit,
    doctor,
    report::OutputFormat,
    runtime::{Reached, RuntimeArgs, Runtimes},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Which container runtimes answered (containerd, Docker, cgroup naming), and how many
/// containers each knows.
fn runtimes(args: &RuntimeArgs) -> Vec<Reached> {
    let hier = Hierarchy::detect().ok();
    let version = hier.as_ref().map(|h| h.memory_version);
    Runtimes::new(args, hier.as_ref()).reach(version).0
}

fn runtimes_line(reached: &[Reached]) -> String {
    if reached.is_empty() {
        return "none: no containerd or Docker socket at the default paths, no memory cgroup mount"
            .into();
    }
    reached
        .iter()
        .map(|r| match &r.result {
            Ok(n) => format!("{} {} ({n} containers)", r.kind, r.endpoint),
            Err(e) => format!("{} not reached ({e})", r.kind),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn run(args: &Args) -> anyhow::Result<i32> {
    let r = doctor::run();
    let reached = runtimes(&args.runtime);
    match args.output {
        OutputFormat::Json => {
            let mut doc = serde_json::to_value(&r)?;
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("runtimes".into(), serde_json::to_value(&reached)?);
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Human => {
            print_human(&r);
            println!("runtimes        {}", runtimes_line(&reached));
        }
    }
    Ok(if r.can_run { exit::OK } else { exit::FAILED })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_human(r: &doctor::Report) {
    println!("kernel          {}", r.kernel_release);
    print_cgroup(r);
    match &r.tracefs.path {
        Some(p) if r.tracefs.mounted_by_oomlab => {
            println!("tracefs         was not mounted: mounted it at {p}")
        }
        Some(p) => println!("tracefs         {p}"),
        None => println!(
            "tracefs         {}",
            r.tracefs.error.as_deref().unwrap_or("unavailable")
        ),
    }
    println!("btf             {}", yes(r.btf));
    println!(
        "lockdown        {}",
        r.lockdown
            .as_deref()
            .unwrap_or("unknown (securityfs not mounted)")
    );
    match r.psi_state {
        PsiState::On => println!("psi             yes (inject --pressure can hold a level)"),
        off => println!("psi             no: {off}; inject --pressure refuses"),
    }
    println!(
        "oom_dump_tasks  {}",
        r.oom_dump_tasks.map_or("unknown".into(), |v| v.to_string())
    );
    println!(
        "/dev/kmsg       {}",
        if r.kmsg_readable {
            "readable"
        } else {
            "not readable"
        }
    );
    let c = &r.capabilities;
    println!(
        "capabilities    euid {} CAP_BPF {} CAP_PERFMON {} CAP_SYS_ADMIN {}",
        c.euid,
        yes(c.cap_bpf),
        yes(c.cap_perfmon),
        yes(c.cap_sys_admin)
    );
    print_tracing(r);
    print_features(r);
    print_verdict(r);
}

fn print_cgroup(r: &doctor::Report) {
    match (&r.cgroup.memory_version, &r.cgroup.memory_mount) {
        (Some(v), Some(m)) => println!(
            "cgroup          mode {}; memory controller on cgroup {} at {m}{}",
            r.cgroup.mode.map_or("?".into(), |m| m.to_string()),
            v,
            r.cgroup
                .unified_mount
                .as_deref()
                .map(|u| format!(" (v2 mounted at {u})"))
                .unwrap_or_default()
        ),
        _ => println!(
            "cgroup          {}",
            r.cgroup.error.as_deref().unwrap_or("unknown")
        ),
    }
}

/// The tracepoints found and what real attaches made of them.
fn print_tracing(r: &doctor::Report) {
    println!("tracepoints");
    for t in &r.tracepoints {
        if t.present {
            println!("  {:<42} present  [{}]", t.name, t.fields.join(", "));
        } else {
            println!(
                "  {:<42} MISSING{}",
                t.name,
                if t.required { " (required)" } else { "" }
            );
        }
    }
    println!("attach (real load + attach)");
    for a in &r.attach {
        if a.ok {
            println!("  {:<42} usable", a.name);
        } else {
            println!(
                "  {:<42} unavailable: {}",
                a.name,
                a.reason.as_deref().unwrap_or("see error")
            );
            if let Some(e) = &a.error {
                println!("  {:<42}   error: {e}", "");
            }
        }
    }
}

/// Optional features: present, or what oomlab does without them.
fn print_features(r: &doctor::Report) {
    println!("features");
    for f in &r.features {
        if f.present {
            println!("  {:<42} yes", f.name);
        } else {
            println!("  {:<42} no: {}", f.name, f.without);
        }
    }
}

fn print_verdict(r: &doctor::Report) {
    if r.can_run {
        println!("verdict         oomlab can run here");
    } else {
        println!("verdict         oomlab cannot run here:");
        for p in &r.problems {
            println!("  - {p}");
        }
    }
}
