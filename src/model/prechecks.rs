//! A precheck's parameters and the rules of the fields that ask for one: `die_id`, `slot`,
//! `top_cell` and which layout (`upload_id` or `job_id`). Each parser's error is the message the
//! API answers with (400), naming the field; rules that need the server's state (the upload
//! exists, its layout holds the top cell) are the handler's.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// What a precheck run was asked to do, as stored: the checked values, as text.
#[derive(Debug, Clone)]
pub struct PrecheckParams {
    pub upload_id: Uuid,
    pub top_cell: String,
    pub die_id: String,
    pub slot: String,
    pub cob: bool,
}

/// The die's id the precheck writes into the layout: exactly 8 ASCII letters or digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DieId(String);

impl DieId {
    /// What the precheck uses when none is given.
    pub const DEFAULT: &'static str = "FFFFFFFF";

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Default for DieId {
    fn default() -> DieId {
        DieId(DieId::DEFAULT.into())
    }
}

impl FromStr for DieId {
    type Err = String;
    fn from_str(s: &str) -> Result<DieId, String> {
        // `len` counts bytes: a non-ASCII letter fails either test.
        if s.len() != 8 || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "die_id: {s:?} must be exactly 8 letters or digits (default {})",
                DieId::DEFAULT
            ));
        }
        Ok(DieId(s.into()))
    }
}

impl fmt::Display for DieId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Slot sizes the precheck knows, as it names them (in [`Slot::ALL`]'s order).
pub const SLOTS: [&str; 4] = {
    let s = crate::gf180::SLOTS;
    [s[0].name, s[1].name, s[2].name, s[3].name]
};

/// A slot size of the shuttle: width x height, in slots (`0p5` is a half).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slot {
    #[default]
    Full,
    HalfWidth,
    HalfHeight,
    Quarter,
}

impl Slot {
    pub const ALL: [Slot; 4] = [Slot::Full, Slot::HalfWidth, Slot::HalfHeight, Slot::Quarter];

    /// The name the precheck's `--slot` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Full => SLOTS[0],
            Slot::HalfWidth => SLOTS[1],
            Slot::HalfHeight => SLOTS[2],
            Slot::Quarter => SLOTS[3],
        }
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Slot, String> {
        Slot::ALL
            .into_iter()
            .find(|slot| slot.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "slot: {s:?} is not a slot size: use one of {}",
                    SLOTS.join(", ")
                )
            })
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cell name the container is given as one argument: it must not look like a flag or a path,
/// or carry anything a terminal or a log would misread. Whether the layout holds it is the
/// handler's to check, against the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopCell(String);

impl TopCell {
    /// The longest name taken, in bytes.
    pub const MAX_LEN: usize = 1024;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for TopCell {
    type Err = String;
    fn from_str(top: &str) -> Result<TopCell, String> {
        let problem = if top.is_empty() {
            "is empty"
        } else if top.starts_with('-') {
            "starts with '-'"
        } else if top.contains('/') {
            "contains '/'"
        } else if top.chars().any(|c| c.is_whitespace() || c.is_control()) {
            "contains whitespace or control characters"
        } else if top.len() > TopCell::MAX_LEN {
            "is longer than 1024 bytes"
        } else {
            return Ok(TopCell(top.into()));
        };
        Err(format!(
            "top_cell: {top:?} {problem}: give the layout's top cell name"
        ))
    }
}

impl fmt::Display for TopCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which layout a precheck checks: an upload, or the final layout of a build job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecheckSource {
    Upload(Uuid),
    Build(Uuid),
}

impl PrecheckSource {
    /// From the request's `upload_id` and `job_id`, of which exactly one is given, as a UUID.
    pub fn parse(upload_id: Option<&str>, job_id: Option<&str>) -> Result<PrecheckSource, String> {
        match (upload_id, job_id) {
            (Some(given), None) => Uuid::parse_str(given).map(PrecheckSource::Upload).map_err(|_| {
                format!(
                    "upload_id: {given:?} is not an upload id (use the Id that POST /api/v1/uploads returned)"
                )
            }),
            (None, Some(given)) => Uuid::parse_str(given).map(PrecheckSource::Build).map_err(|_| {
                format!(
                    "job_id: {given:?} is not a job id (use the Id that POST /api/v1/projects/{{id}}/jobs returned)"
                )
            }),
            (Some(_), Some(_)) => Err("upload_id and job_id: give one of them, not both".into()),
            (None, None) => Err(
                "upload_id: missing: give the Id that POST /api/v1/uploads returned (or job_id, the Id of a completed build job)".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that every input is refused with a message holding its fragment and naming the
    /// field, as the API answers it.
    fn refuses<T: FromStr<Err = String> + fmt::Debug>(field: &str, cases: &[(&str, &str)]) {
        for (input, fragment) in cases {
            let e = input
                .parse::<T>()
                .expect_err(&format!("{field} {input:?} is taken"));
            assert!(e.starts_with(&format!("{field}: ")), "{input:?}: {e}");
            assert!(e.contains(fragment), "{input:?}: {e:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn die_ids_are_eight_ascii_letters_or_digits() {
        for good in ["FFFFFFFF", "BUILD001", "abcdefgh", "12345678", "aB3dE6gH"] {
            assert_eq!(good.parse::<DieId>().unwrap().as_str(), good);
        }
        assert_eq!(DieId::default().as_str(), "FFFFFFFF");
        let must = "must be exactly 8 letters or digits (default FFFFFFFF)";
        refuses::<DieId>(
            "die_id",
            &[
                ("ABC", "\"ABC\" must be exactly 8"),
                ("ABCDEFG", must),
                ("ABCDEFGH1", must),
                ("", "\"\" must be exactly 8"),
                ("ABCD-EFG", must),
                ("ABCD EFG", must),
                ("ABCD_EFG", must),
                (" ABCDEFG", must),
                ("ABCDEFG\n", must),
                ("ABCDÉFG", must),
                ("ABCDEFGÉ", must),
                ("ＡＢＣＤＥＦＧＨ", must),
                ("ABCD\0EFG", "\\0"),
            ],
        );
        assert_eq!(
            "ABC".parse::<DieId>().unwrap_err(),
            "die_id: \"ABC\" must be exactly 8 letters or digits (default FFFFFFFF)"
        );
    }

    #[test]
    fn slots_are_the_four_sizes_the_precheck_knows() {
        assert_eq!(Slot::ALL.map(Slot::as_str), SLOTS);
        for slot in Slot::ALL {
            assert_eq!(slot.as_str().parse::<Slot>(), Ok(slot));
        }
        assert_eq!(Slot::default().as_str(), "1x1");
        let all = "use one of 1x1, 0p5x1, 1x0p5, 0p5x0p5";
        refuses::<Slot>(
            "slot",
            &[
                ("2x2", "\"2x2\" is not a slot size"),
                ("0.5x0.5", all),
                ("", all),
                ("1X1", all),
                (" 1x1", all),
                ("1x1 ", all),
                ("full", all),
            ],
        );
        assert_eq!(
            "2x2".parse::<Slot>().unwrap_err(),
            "slot: \"2x2\" is not a slot size: use one of 1x1, 0p5x1, 1x0p5, 0p5x0p5"
        );
    }

    #[test]
    fn top_cells_that_could_be_flags_or_paths_are_refused() {
        for good in [
            "chip_top",
            "gf180mcu_ws_ip__logo",
            "a-b",
            "top$1",
            "ünï",
            "x",
        ] {
            assert_eq!(good.parse::<TopCell>().unwrap().as_str(), good);
        }
        assert!("a".repeat(1024).parse::<TopCell>().is_ok());
        let long = "a".repeat(1025);
        let blank = "contains whitespace or control characters";
        refuses::<TopCell>(
            "top_cell",
            &[
                ("", "\"\" is empty"),
                ("-rf", "starts with '-'"),
                ("--dir=/etc", "starts with '-'"),
                ("cells/chip_top", "contains '/'"),
                ("/chip_top", "contains '/'"),
                ("chip top", blank),
                (" chip_top", blank),
                ("chip_top ", blank),
                ("chip\ttop", blank),
                ("chip_top\n--cob", blank),
                ("chip\u{7}top", blank),
                ("chip\u{1b}[31mtop", blank),
                ("chip\u{7f}", blank),
                ("chip\0top", blank),
                ("chip\u{a0}top", blank),
                ("chip\u{85}top", blank),
                (&long, "is longer than 1024 bytes"),
            ],
        );
        assert_eq!(
            "-rf".parse::<TopCell>().unwrap_err(),
            "top_cell: \"-rf\" starts with '-': give the layout's top cell name"
        );
    }

    #[test]
    fn a_precheck_checks_one_upload_or_one_build() {
        let id = Uuid::new_v4();
        let text = id.to_string();
        let upper = text.to_uppercase();
        assert_eq!(
            PrecheckSource::parse(Some(&text), None),
            Ok(PrecheckSource::Upload(id))
        );
        assert_eq!(
            PrecheckSource::parse(Some(&upper), None),
            Ok(PrecheckSource::Upload(id))
        );
        assert_eq!(
            PrecheckSource::parse(None, Some(&text)),
            Ok(PrecheckSource::Build(id))
        );
        for (upload_id, job_id, fragment) in [
            (
                Some("abc"),
                None,
                "upload_id: \"abc\" is not an upload id (use the Id that POST /api/v1/uploads returned)",
            ),
            (Some(""), None, "upload_id: \"\" is not an upload id"),
            (
                Some("../etc"),
                None,
                "upload_id: \"../etc\" is not an upload id",
            ),
            (
                None,
                Some("abc"),
                "job_id: \"abc\" is not a job id (use the Id that POST /api/v1/projects/{id}/jobs returned)",
            ),
            (None, Some(""), "job_id: \"\" is not a job id"),
            (
                Some(text.as_str()),
                Some(text.as_str()),
                "upload_id and job_id: give one of them, not both",
            ),
            (Some("abc"), Some("abc"), "give one of them, not both"),
            (
                None,
                None,
                "upload_id: missing: give the Id that POST /api/v1/uploads returned (or job_id, the Id of a completed build job)",
            ),
        ] {
            let e = PrecheckSource::parse(upload_id, job_id).unwrap_err();
            assert!(e.contains(fragment), "{upload_id:?} {job_id:?}: {e}");
        }
    }
}
