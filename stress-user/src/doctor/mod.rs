//! `oomlab doctor`: what this kernel lets oomlab do, found by trying — mounting tracefs, reading
//! formats, loading and attaching real programs — rather than by guessing from versions.

pub mod features;

use std::{
    fs,
    path::{Path, PathBuf},
};

use caps::{CapSet, Capability};
use serde::Serialize;

use crate::{
    cgroup::{Hierarchy, Mode, Version},
    trace::{self, HookResult},
};

#[derive(Debug, Serialize)]
pub struct CgroupCheck {
    pub mode: Option<Mode>,
    pub memory_version: Option<Version>,
    pub memory_mount: Option<String>,
    pub unified_mount: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TracefsCheck {
    pub path: Option<String>,
    pub mounted_by_oomlab: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TracepointCheck {
    pub name: String,
    pub present: bool,
    pub required: bool,
    pub fields: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct AttachCheck {
    pub name: String,
    pub ok: bool,
    pub error: Option<String>,
    /// A short reading of the error, when it is one doctor recognises.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Capabilities {
    pub euid: u32,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel_release: String,
    pub cgroup: CgroupCheck,
    pub tracefs: TracefsCheck,
    pub btf: bool,
    pub lockdown: Option<String>,
    pub psi: bool,
    /// Why PSI is off when it is (`psi=0`, `CONFIG_PSI_DEFAULT_DISABLED`, no `CONFIG_PSI`):
    /// `inject --pressure` needs it.
    pub psi_state: crate::cgroup::PsiState,
    pub oom_dump_tasks: Option<u32>,
    pub kmsg_readable: bool,
    pub capabilities: Capabilities,
    pub tracepoints: Vec<TracepointCheck>,
    pub attach: Vec<AttachCheck>,
    /// Optional kernel features; oomlab runs without them, with less.
    pub features: Vec<features::FeatureCheck>,
    pub can_run: bool,
    /// Why oomlab cannot run (empty when it can).
    pub problems: Vec<String>,
}

fn has_cap(c: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, c).unwrap_or(false)
}

/// `[integrity]` → `integrity`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_string())
}

/// The lockdown mode, mounting securityfs when nothing is there (these machines boot without it).
fn read_lockdown() -> Option<String> {
    const FILE: &str = "/sys/kernel/security/lockdown";
    if !Path::new(FILE).exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    fs::read_to_string(FILE)
        .ok()
        .and_then(|t| parse_lockdown(&t))
}

/// Reads a known error text and says what it means.
pub fn explain_hook_error(hook: &str, error: &str) -> Option<String> {
    if hook.starts_with("kprobe") && error.contains("kprobe/type") {
        return Some("kprobes are not compiled into this kernel (CONFIG_KPROBES unset)".into());
    }
    if error.contains("PermissionDenied") || error.contains("code: 1,") {
        return Some("the kernel refused to load the program (EPERM)".into());
    }
    if error.contains("BTF") {
        return Some("no kernel BTF (/sys/kernel/btf/vmlinux)".into());
    }
    None
}

fn attach_check(h: HookResult) -> AttachCheck {
    let reason = h
        .error
        .as_deref()
        .and_then(|e| explain_hook_error(h.hook, e));
    AttachCheck {
        name: h.hook.into(),
        ok: h.attached,
        error: h.error,
        reason,
    }
}

pub fn run() -> Report {
    let mut problems = Vec::new();
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = check_cgroup(&mut problems);
    let capabilities = check_capabilities(&mut problems);
    let (tracefs, tracefs_path) = check_tracefs(&mut problems);
    let (tracepoints, attach) = match &tracefs_path {
        Some(tp) => (
            check_tracepoints(tp, &mut problems),
            check_attach(tp, &mut problems),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Report {
        kernel_release,
        cgroup,
        tracefs,
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        lockdown: read_lockdown(),
        psi: fs::read_to_string("/proc/pressure/memory").is_ok(),
        psi_state: crate::cgroup::psi_state(),
        oom_dump_tasks: fs::read_to_string("/proc/sys/vm/oom_dump_tasks")
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        kmsg_readable: fs::File::open("/dev/kmsg").is_ok(),
        capabilities,
        tracepoints,
        attach,
        features: features::check(tracefs_path.as_deref()),
        can_run: problems.is_empty(),
        problems,
    }
}

fn check_cgroup(problems: &mut Vec<String>) -> CgroupCheck {
    match Hierarchy::detect() {
        Ok(h) => CgroupCheck {
            mode: Some(h.mode),
            memory_version: Some(h.memory_version),
            memory_mount: Some(h.memory_mount.display().to_string()),
            unified_mount: h.unified.map(|p| p.display().to_string()),
            error: None,
        },
        Err(e) => {
            problems.push(e.to_string());
            CgroupCheck {
                mode: None,
                memory_version: None,
                memory_mount: None,
                unified_mount: None,
                error: Some(e.to_string()),
            }
        }
    }
}

fn check_capabilities(problems: &mut Vec<String>) -> Capabilities {
    let capabilities = Capabilities {
        euid: nix::unistd::geteuid().as_raw(),
        cap_bpf: has_cap(Capability::CAP_BPF),
        cap_perfmon: has_cap(Capability::CAP_PERFMON),
        cap_sys_admin: has_cap(Capability::CAP_SYS_ADMIN),
    };
    let admin = capabilities.cap_sys_admin;
    if !(capabilities.cap_bpf || admin) {
        problems.push("missing CAP_BPF (or CAP_SYS_ADMIN): run oomlab as root".into());
    }
    if !(capabilities.cap_perfmon || admin) {
        problems
            .push("missing CAP_PERFMON (or CAP_SYS_ADMIN): needed to attach tracepoints".into());
    }
    capabilities
}

fn check_tracefs(problems: &mut Vec<String>) -> (TracefsCheck, Option<PathBuf>) {
    match trace::ensure_tracefs() {
        Ok(t) => (
            TracefsCheck {
                path: Some(t.path.display().to_string()),
                mounted_by_oomlab: t.mounted_by_oomlab,
                error: None,
            },
            Some(t.path),
        ),
        Err(e) => {
            problems.push(e.to_string());
            (
                TracefsCheck {
                    path: None,
                    mounted_by_oomlab: false,
                    error: Some(e.to_string()),
                },
                None,
            )
        }
    }
}

/// Every tracepoint of the catalogue: on this kernel or not, and its fields.
fn check_tracepoints(tracefs: &Path, problems: &mut Vec<String>) -> Vec<TracepointCheck> {
    let mut tracepoints = Vec::new();
    for &trace::TracepointSpec {
        group,
        event,
        required,
        ..
    } in trace::TRACEPOINTS
    {
        let format = trace::read_format(tracefs, group, event).ok().flatten();
        if format.is_none() && required {
            problems.push(format!("required tracepoint {group}:{event} is missing"));
        }
        tracepoints.push(TracepointCheck {
            name: format!("{group}:{event}"),
            present: format.is_some(),
            required,
            fields: format
                .map(|f| f.fields.into_iter().map(|f| f.name).collect())
                .unwrap_or_default(),
        });
    }
    tracepoints
}

/// Loads the object and attaches every tracepoint this kernel has, then the optional hooks.
fn check_attach(tracefs: &Path, problems: &mut Vec<String>) -> Vec<AttachCheck> {
    let loaded = trace::build_config(tracefs)
        .map_err(|e| e.to_string())
        .and_then(|cfg| trace::load(&cfg).map_err(|e| e.to_string()));
    let mut bpf = match loaded {
        Ok(bpf) => bpf,
        Err(e) => {
            problems.push(format!("cannot load the eBPF object: {e}"));
            return Vec::new();
        }
    };
    let mut attach = Vec::new();
    for spec in trace::TRACEPOINTS {
        if trace::read_format(tracefs, spec.group, spec.event)
            .ok()
            .flatten()
            .is_none()
        {
            continue;
        }
        let res = trace::attach_tracepoint(&mut bpf, spec);
        if let (Err(e), true) = (&res, spec.required) {
            problems.push(format!("cannot attach {}:{}: {e}", spec.group, spec.event));
        }
        attach.push(AttachCheck {
            name: format!("tracepoint:{}:{}", spec.group, spec.event),
            ok: res.is_ok(),
            error: res.err().map(|e| e.to_string()),
            reason: None,
        });
    }
    attach.push(attach_check(trace::try_kprobe(&mut bpf)));
    attach.push(attach_check(trace::try_fentry(&mut bpf)));
    attach
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_picks_the_bracketed_mode() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown("none integrity"), None);
    }

    // The errors exactly as aya words them on a kernel built without kprobes that refuses
    // fentry programs.
    #[test]
    fn recognises_the_host_errors() {
        let kprobe = r#"attach: FileError { filename: "/sys/bus/event_source/devices/kprobe/type", io_error: Os { code: 2, kind: NotFound, message: "No such file or directory" } }"#;
        assert!(explain_hook_error("kprobe:oom_kill_process", kprobe)
            .expect("known")
            .contains("CONFIG_KPROBES"));
        let fentry = r#"load: LoadError { io_error: Os { code: 1, kind: PermissionDenied, message: "Operation not permitted" }, verifier_log: }"#;
        assert!(explain_hook_error("fentry:oom_kill_process", fentry)
            .expect("known")
            .contains("EPERM"));
        assert_eq!(explain_hook_error("fentry:x", "something else"), None);
    }
}
