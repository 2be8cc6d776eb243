//! A project's jobs: what a simulation or a build was asked to do, and the rules of a request
//! for one. A request is tagged by its `kind`, and each kind has its own fields; [`JobRequest::
//! parse`] reads the fields as the API's body gives them and says, as the API answers it (400),
//! what is wrong. The rules that need the server's state (the project holds the files, a source
//! declares the top module, the server has a PDK) are the handler's.

use uuid::Uuid;

use super::projects::check_project_path;

/// The simulators a simulation job may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulationTool {
    Icarus,
    Verilator,
}

impl SimulationTool {
    pub const ALL: [SimulationTool; 2] = [SimulationTool::Icarus, SimulationTool::Verilator];

    pub fn as_str(self) -> &'static str {
        match self {
            SimulationTool::Icarus => "icarus",
            SimulationTool::Verilator => "verilator",
        }
    }

    pub fn parse(s: &str) -> Option<SimulationTool> {
        SimulationTool::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What a simulation job was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationParams {
    pub project_id: Uuid,
    pub tool: SimulationTool,
    /// The testbench's top module.
    pub top: String,
    /// The project files compiled, in order (every file of the project is in the container).
    pub sources: Vec<String>,
}

/// What a build job was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildParams {
    pub project_id: Uuid,
    /// The LibreLane config file's path in the project.
    pub config: String,
}

/// A project file as a job was given it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A simulation's top module, passed to the simulator as one argument: a plain Verilog
/// identifier (a letter or `_`, then letters, digits, `_` or `$`), at most 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleName(String);

impl ModuleName {
    pub const MAX_LEN: usize = 1024;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::str::FromStr for ModuleName {
    type Err = String;
    fn from_str(top: &str) -> Result<ModuleName, String> {
        let mut chars = top.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$'))
            && top.len() <= ModuleName::MAX_LEN;
        if !ok {
            return Err(format!(
                "top: {top:?} is not a Verilog module name (a letter or '_', then letters, digits, '_' or '$')"
            ));
        }
        Ok(ModuleName(top.into()))
    }
}

/// A job request's fields as the body gives them: its `kind`, and the fields of every kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFields {
    pub kind: String,
    pub tool: Option<String>,
    pub top: Option<String>,
    pub files: Option<Vec<String>>,
    pub config: Option<String>,
}

/// A job asked for, its fields checked: `{"kind": "simulation", ...}` or `{"kind": "build", ...}`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobRequest {
    Simulation(SimulationRequest),
    Build(BuildRequest),
}

/// A simulation asked for: the simulator, the top module and the files to compile.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationRequest {
    pub tool: SimulationTool,
    pub top: ModuleName,
    /// The files listed, in order: at least one, each a project path, none twice. `None`: every
    /// `.v` and `.sv` file of the project.
    pub files: Option<Vec<String>>,
}

/// A build asked for: the project's LibreLane config (a `.json`, `.yaml` or `.yml` path).
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRequest {
    pub config: String,
}

impl JobRequest {
    /// The request the fields make, or the first thing wrong with them (in the order of the
    /// checks below, which is the order the API has always refused them in).
    pub fn parse(fields: JobFields) -> Result<JobRequest, String> {
        match fields.kind.as_str() {
            "simulation" => SimulationRequest::parse(fields).map(JobRequest::Simulation),
            "build" => BuildRequest::parse(fields).map(JobRequest::Build),
            other => Err(format!(
                "kind: {other:?} is not a kind of job: use simulation or build"
            )),
        }
    }
}

/// The refusal of a field that belongs to the other kind of job.
fn not_for(field: &str, kind: &str) -> String {
    format!("{field}: not a field of a {kind} job (see the jobs section of README.md)")
}

impl SimulationRequest {
    fn parse(fields: JobFields) -> Result<SimulationRequest, String> {
        if fields.config.is_some() {
            return Err(not_for("config", "simulation"));
        }
        let tool = match fields.tool.as_deref() {
            None => SimulationTool::Icarus,
            Some(t) => SimulationTool::parse(t).ok_or_else(|| {
                format!(
                    "tool: {t:?} is not a simulator: use one of {}",
                    SimulationTool::ALL.map(SimulationTool::as_str).join(", ")
                )
            })?,
        };
        let top = fields
            .top
            .ok_or("top: missing: name the testbench's top module")?
            .parse()?;
        if let Some(listed) = &fields.files {
            if listed.is_empty() {
                return Err(
                    "files: empty: list the files to compile, or leave files out to compile every .v and .sv file".into(),
                );
            }
            for (i, f) in listed.iter().enumerate() {
                check_project_path(f).map_err(|e| format!("files: {e}"))?;
                if listed[..i].contains(f) {
                    return Err(format!("files: {f:?} is listed twice"));
                }
            }
        }
        Ok(SimulationRequest {
            tool,
            top,
            files: fields.files,
        })
    }
}

impl BuildRequest {
    fn parse(fields: JobFields) -> Result<BuildRequest, String> {
        for (field, given) in [
            ("tool", fields.tool.is_some()),
            ("top", fields.top.is_some()),
            ("files", fields.files.is_some()),
        ] {
            if given {
                return Err(not_for(field, "build"));
            }
        }
        let config = fields.config.ok_or(
            "config: missing: name the project's LibreLane config, e.g. \"config\": \"config.json\"",
        )?;
        check_project_path(&config).map_err(|e| format!("config: {e}"))?;
        if ![".json", ".yaml", ".yml"]
            .iter()
            .any(|e| config.ends_with(e))
        {
            return Err(format!(
                "config: {config:?} is not a LibreLane config: give a .json, .yaml or .yml file"
            ));
        }
        Ok(BuildRequest { config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulation() -> JobFields {
        JobFields {
            kind: "simulation".into(),
            top: Some("tb".into()),
            ..JobFields::default()
        }
    }

    fn build() -> JobFields {
        JobFields {
            kind: "build".into(),
            config: Some("config.json".into()),
            ..JobFields::default()
        }
    }

    fn files(paths: &[&str]) -> Option<Vec<String>> {
        Some(paths.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn top_modules_are_identifiers() {
        for good in ["tb", "_tb", "tb_counter$1", "T", "a1"] {
            assert_eq!(good.parse::<ModuleName>().unwrap().as_str(), good);
        }
        assert!("a".repeat(1024).parse::<ModuleName>().is_ok());
        let why =
            "is not a Verilog module name (a letter or '_', then letters, digits, '_' or '$')";
        let long = "a".repeat(1025);
        for bad in [
            "", "-tb", "1tb", "$tb", "tb top", " tb", "tb;rm", "a/b", "t\u{0}", "tb\n", "tb-1",
            "tb.v", "ünï", &long,
        ] {
            let e = bad.parse::<ModuleName>().unwrap_err();
            assert!(e.starts_with("top: "), "{bad:?}: {e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(
            "-tb".parse::<ModuleName>().unwrap_err(),
            format!("top: \"-tb\" {why}")
        );
    }

    #[test]
    fn good_requests_are_read_with_their_defaults() {
        assert_eq!(
            JobRequest::parse(simulation()),
            Ok(JobRequest::Simulation(SimulationRequest {
                tool: SimulationTool::Icarus,
                top: "tb".parse().unwrap(),
                files: None,
            }))
        );
        let listed = JobFields {
            tool: Some("verilator".into()),
            files: files(&["rtl/counter.v", "tb/tb.v"]),
            ..simulation()
        };
        assert_eq!(
            JobRequest::parse(listed),
            Ok(JobRequest::Simulation(SimulationRequest {
                tool: SimulationTool::Verilator,
                top: "tb".parse().unwrap(),
                files: files(&["rtl/counter.v", "tb/tb.v"]),
            }))
        );
        for config in ["config.json", "flow/config.yaml", "c.yml"] {
            let fields = JobFields {
                config: Some(config.into()),
                ..build()
            };
            assert_eq!(
                JobRequest::parse(fields),
                Ok(JobRequest::Build(BuildRequest {
                    config: config.into()
                }))
            );
        }
    }

    /// Every refusal of a job request's fields: (the fields, a fragment of the message).
    #[test]
    fn bad_requests_say_what_is_wrong() {
        let kind = |k: &str| JobFields {
            kind: k.into(),
            ..JobFields::default()
        };
        let cases: Vec<(JobFields, &str)> = vec![
            (
                kind("synthesis"),
                "kind: \"synthesis\" is not a kind of job: use simulation or build",
            ),
            (kind("precheck"), "kind: \"precheck\" is not a kind of job"),
            (kind(""), "kind: \"\" is not a kind of job"),
            (kind("Simulation"), "use simulation or build"),
            (kind("build "), "use simulation or build"),
            // A simulation.
            (
                JobFields {
                    config: Some("config.json".into()),
                    ..simulation()
                },
                "config: not a field of a simulation job (see the jobs section of README.md)",
            ),
            (
                JobFields {
                    tool: Some("vcs".into()),
                    ..simulation()
                },
                "tool: \"vcs\" is not a simulator: use one of icarus, verilator",
            ),
            (
                JobFields {
                    tool: Some("Icarus".into()),
                    ..simulation()
                },
                "icarus, verilator",
            ),
            (
                JobFields {
                    tool: Some(String::new()),
                    ..simulation()
                },
                "tool: \"\" is not a simulator",
            ),
            (
                kind("simulation"),
                "top: missing: name the testbench's top module",
            ),
            (
                JobFields {
                    top: Some("-tb".into()),
                    ..simulation()
                },
                "top: \"-tb\" is not a Verilog module name",
            ),
            (
                JobFields {
                    top: Some(String::new()),
                    ..simulation()
                },
                "top: \"\" is not a Verilog module name",
            ),
            (
                JobFields {
                    files: files(&[]),
                    ..simulation()
                },
                "files: empty: list the files to compile, or leave files out to compile every .v and .sv file",
            ),
            (
                JobFields {
                    files: files(&["../tb.v"]),
                    ..simulation()
                },
                "files: the path \"../tb.v\" contains '..'",
            ),
            (
                JobFields {
                    files: files(&["tb.v", "/etc/passwd"]),
                    ..simulation()
                },
                "files: the path \"/etc/passwd\" is absolute",
            ),
            (
                JobFields {
                    files: files(&["tb.v", ""]),
                    ..simulation()
                },
                "files: the path \"\" is empty",
            ),
            (
                JobFields {
                    files: files(&["tb.v", "tb.v"]),
                    ..simulation()
                },
                "files: \"tb.v\" is listed twice",
            ),
            (
                JobFields {
                    files: files(&["a.v", "tb.v", "b.v", "tb.v"]),
                    ..simulation()
                },
                "files: \"tb.v\" is listed twice",
            ),
            // A build.
            (
                JobFields {
                    tool: Some("icarus".into()),
                    ..build()
                },
                "tool: not a field of a build job (see the jobs section of README.md)",
            ),
            (
                JobFields {
                    top: Some("x".into()),
                    ..build()
                },
                "top: not a field of a build job",
            ),
            (
                JobFields {
                    files: files(&["a.v"]),
                    ..build()
                },
                "files: not a field of a build job",
            ),
            (
                kind("build"),
                "config: missing: name the project's LibreLane config, e.g. \"config\": \"config.json\"",
            ),
            (
                JobFields {
                    config: Some("/etc/config.json".into()),
                    ..build()
                },
                "config: the path \"/etc/config.json\" is absolute",
            ),
            (
                JobFields {
                    config: Some("../config.json".into()),
                    ..build()
                },
                "config: the path \"../config.json\" contains '..'",
            ),
            (
                JobFields {
                    config: Some(String::new()),
                    ..build()
                },
                "config: the path \"\" is empty",
            ),
            (
                JobFields {
                    config: Some("rtl/counter.v".into()),
                    ..build()
                },
                "config: \"rtl/counter.v\" is not a LibreLane config: give a .json, .yaml or .yml file",
            ),
            (
                JobFields {
                    config: Some("config.JSON".into()),
                    ..build()
                },
                "give a .json, .yaml or .yml file",
            ),
            (
                JobFields {
                    config: Some("config.json.bak".into()),
                    ..build()
                },
                "give a .json, .yaml or .yml file",
            ),
        ];
        for (fields, fragment) in cases {
            let shown = format!("{fields:?}");
            let e = JobRequest::parse(fields).expect_err(&format!("{shown} is taken"));
            assert!(e.contains(fragment), "{shown}: {e:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn the_first_problem_is_the_one_said() {
        // A field of the other kind before the kind's own fields, as the API always answered.
        let fields = JobFields {
            config: Some("c.json".into()),
            tool: Some("vcs".into()),
            top: None,
            ..simulation()
        };
        assert!(
            JobRequest::parse(fields)
                .unwrap_err()
                .starts_with("config:")
        );
        let fields = JobFields {
            tool: Some("vcs".into()),
            top: Some("-tb".into()),
            ..simulation()
        };
        assert!(JobRequest::parse(fields).unwrap_err().starts_with("tool:"));
        let fields = JobFields {
            top: Some("x".into()),
            files: files(&[]),
            config: None,
            ..build()
        };
        assert!(JobRequest::parse(fields).unwrap_err().starts_with("top:"));
    }
}
