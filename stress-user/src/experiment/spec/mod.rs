//! Experiment files: TOML read with serde (unknown keys refused), then checked as a whole so an
//! impossible combination is reported with the line it is on, before anything is created.
//! `raw` is the file as written, `check` turns it into the `model` the runner consumes, and
//! `context` places each error at its line and column.

mod check;
mod context;
mod model;
mod raw;

use self::{context::Ctx, raw::RawFile};
pub use self::{
    context::{line_col, SpecError},
    model::{
        Adj, Amount, App, AppKind, Expectations, Experiment, Inject, Located, Stage, Target,
        VictimRole,
    },
};

/// Scales sizes for slow emulated machines (`OOMLAB_VM=1`: the test VMs): every absolute size
/// (limits, apps, injections, thresholds) is divided by this.
pub const VM_SCALE: u64 = 8;

/// Reads an experiment from TOML text. `file` names it in errors. With `vm_scale`, absolute
/// sizes are divided by [`VM_SCALE`] (see `OOMLAB_VM`).
pub fn parse(file: &str, text: &str, vm_scale: bool) -> Result<Experiment, SpecError> {
    let cx = Ctx {
        file,
        text,
        scale: if vm_scale { VM_SCALE } else { 1 },
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.err(span, e.message().trim().to_string())
    })?;
    check::check(&cx, raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::Version,
        inject::{alloc::Kind, control::Pace, plan::OnOom},
        size::SizeSpec,
    };

    const MIB: u64 = 1 << 20;

    fn ok(text: &str) -> Experiment {
        parse("t.toml", text, false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> SpecError {
        match parse("t.toml", text, false) {
            Ok(x) => panic!("expected an error, parsed {x:?}"),
            Err(e) => e,
        }
    }

    const SEED: &str = include_str!("../../../../examples/seed-story.toml");

    #[test]
    fn every_example_parses() {
        for (name, text) in [
            ("seed-story.toml", SEED),
            (
                "oom-group.toml",
                include_str!("../../../../examples/oom-group.toml"),
            ),
            (
                "page-cache.toml",
                include_str!("../../../../examples/page-cache.toml"),
            ),
            (
                "working-set-hold.toml",
                include_str!("../../../../examples/working-set-hold.toml"),
            ),
            (
                "score-adj.toml",
                include_str!("../../../../examples/score-adj.toml"),
            ),
        ] {
            parse(name, text, false).unwrap_or_else(|e| panic!("{e}"));
            parse(name, text, true).unwrap_or_else(|e| panic!("{e} (vm scale)"));
        }
    }

    #[test]
    fn seed_story_is_the_blog_setup() {
        let x = ok(SEED);
        assert!(matches!(x.target, Target::Scratch { limit: Some(l), .. } if l == 500 * MIB));
        assert_eq!(x.apps.len(), 1);
        assert_eq!(x.apps[0].oom_score_adj, Some(988));
        assert_eq!(x.apps[0].kind, AppKind::Builtin { size: 40 * MIB });
        assert_eq!(x.stages.len(), 3);
        let s1 = x.stages[0].inject.as_ref().expect("stage 1 injects");
        assert_eq!(s1.amount, Amount::Size(SizeSpec::Bytes(200 * MIB)));
        assert_eq!(s1.workers, 4);
        assert_eq!(x.stages[0].expect.charged_within, Some(0.02));
        let s2 = x.stages[1].inject.as_ref().expect("stage 2 injects");
        assert_eq!(s2.on_oom, OnOom::Respawn);
        assert_eq!(x.stages[1].expect.victim, Some(VictimRole::Worker));
        let s3 = x.stages[2].inject.as_ref().expect("stage 3 injects");
        assert_eq!(s3.oom_score_adj, Some(Adj::Lowest));
        assert_eq!(x.stages[2].expect.victim, Some(VictimRole::App));
        assert!(x.conclusion.is_some());
    }

    #[test]
    fn vm_scale_divides_sizes() {
        let x = parse("t", SEED, true).expect("parses");
        assert!(
            matches!(x.target, Target::Scratch { limit: Some(l), .. } if l == 500 * MIB / VM_SCALE)
        );
        assert_eq!(x.apps[0].kind, AppKind::Builtin { size: 5 * MIB });
        // The per-process cost of the 4 workers does not scale: charged_within allows it.
        assert_eq!(x.stages[0].expect.charged_allowance, 4 * MIB);
        assert_eq!(ok(SEED).stages[0].expect.charged_allowance, 0);
    }

    const MIN: &str = "[target]\nscratch = true\nmemory_limit = \"100MiB\"\n\n[[stages]]\ninject = { size = \"10MiB\" }\nhold = \"1s\"\n";

    #[test]
    fn minimal_file_and_defaults() {
        let x = ok(MIN);
        assert_eq!(x.name, "experiment");
        let s = &x.stages[0];
        assert_eq!(s.name, "stage 1");
        assert_eq!(s.line, 5);
        let i = s.inject.as_ref().expect("inject");
        assert_eq!((i.workers, i.kind, i.on_oom), (1, Kind::Anon, OnOom::Stop));
        assert_eq!(i.pace, Pace::Fast);
        assert!(x.expect.is_empty());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let e = err(&format!("{MIN}wrkers = 4\n"));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("wrkers"), "{e}");
        let e =
            err("[target]\nscratch = true\nmemory_limt = \"1GiB\"\n[[stages]]\nhold = \"1s\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.message.contains("memory_limt") && e.message.contains("memory_limit"),
            "{e}"
        );
        assert_eq!(e.to_string().split(':').next(), Some("t.toml"));
    }

    #[test]
    fn syntax_error_names_its_line() {
        let e = err("[target]\nscratch = true\nmemory_limit = \"1GiB\n");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn wrong_type_names_its_line() {
        let e = err(&MIN.replace(
            "hold = \"1s\"",
            "hold = \"1s\"\nexpect = { max_oom_kills = \"three\" }",
        ));
        assert_eq!(e.line, 8, "{e}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let cases = [
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", kind = \"heap\" }"),
                6,
                "kind",
            ),
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", oom_score_adj = 1001 }"),
                6,
                "-1000 to 1000",
            ),
            (
                MIN.replace("\"10MiB\" }", "\"10 potatoes\" }"),
                6,
                "invalid size",
            ),
            (MIN.replace("\"1s\"", "\"soon\""), 7, "invalid duration"),
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", workers = 0 }"),
                6,
                "workers",
            ),
            (
                MIN.replace("\"10MiB\" }", "\"10MiB\", on_oom = \"retry\" }"),
                6,
                "respawn",
            ),
            (MIN.replace("\"100MiB\"", "\"50%\""), 3, "absolute size"),
        ];
        for (text, line, needle) in cases {
            let e = err(&text);
            assert_eq!(e.line, line, "{e}");
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn impossible_combinations_name_their_line() {
        let cases = [
            (MIN.replace("\"10MiB\" }", "\"10MiB\", working_set = \"20MiB\" }"), 6, "both `size` and `working_set`"),
            (MIN.replace("\"10MiB\" }", "\"10MiB\", ramp = \"1s\", rate = \"1MiB/s\" }"), 6, "both `ramp` and `rate`"),
            (MIN.replace("scratch = true", "scratch = true\ncgroup = \"/x\""), 3, "more than one target"),
            (MIN.replace("scratch = true", "cgroup = \"/x\""), 3, "scratch target"),
            (MIN.replace("memory_limit = \"100MiB\"", "memory_limit = \"100MiB\"\nmemory_high = \"200MiB\""), 4, "below memory_limit"),
            (format!("{MIN}[stages.expect]\nvictim = \"app\"\n"), 9, "no app"),
            (format!("{MIN}[stages.expect]\napp_survives = true\n"), 9, "no app"),
            (format!("{MIN}[stages.expect]\nvictim = \"none\"\nmin_oom_kills = 1\n"), 10, "contradicts"),
            (format!("{MIN}[stages.expect]\nvictim = \"worker\"\nmax_oom_kills = 0\n"), 10, "contradicts"),
            (format!("{}[stages.expect]\ncharged_within = \"2%\"\n", MIN.replace("10MiB", "200MiB")), 9, "cannot hold"),
            (format!("{MIN}[stages.expect]\ncharged_within = \"two\"\n"), 9, "percentage"),
            ("[target]\nscratch = true\n[[stages]]\nhold = \"1s\"\n[stages.expect]\nvictim = \"worker\"\n".to_string(), 6, "no worker"),
            ("[target]\nscratch = true\n".to_string(), 1, "no [[stages]]"),
            ("[target]\nscratch = true\n[[stages]]\ninject = { size = \"1MiB\" }\n".to_string(), 3, "needs `hold`"),
            ("[target]\nscratch = true\n[[apps]]\nname = \"x\"\n[[stages]]\nhold = \"1s\"\n".to_string(), 3, "needs `command"),
        ];
        for (text, line, needle) in cases {
            let e = err(&text);
            assert_eq!(e.line, line, "{needle}: {e}");
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn v2_only_keys_are_refused_on_v1_with_their_line() {
        let x = ok(include_str!("../../../../examples/oom-group.toml"));
        assert!(x.needs_v2());
        let e = x
            .check_host(Version::V1)
            .expect_err("v1 has no memory.oom.group");
        assert!(
            e.message.contains("oom_group") && e.message.contains("cgroup v1"),
            "{e}"
        );
        let text = include_str!("../../../../examples/oom-group.toml");
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("oom_group"))
            .expect("the example sets oom_group")
            + 1;
        assert_eq!(e.line, line);
        x.check_host(Version::V2).expect("fine on v2");
        assert!(!ok(SEED).needs_v2());
    }
}
