//! Builds `stress-ebpf` for the BPF target with aya-build and leaves the object in OUT_DIR,
//! where `trace::EBPF_OBJECT` embeds it (the aya-template arrangement).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "stress-ebpf")
        .ok_or_else(|| anyhow!("stress-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("stress-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building stress-ebpf (is bpf-linker installed? run `cargo xtask setup`)")
}
