//! The simulation images the project tests use: a real Icarus Verilog from Debian's `iverilog`
//! and a real Verilator from Debian's `verilator` (with the C++ toolchain it builds with), each
//! copied into a `FROM scratch` image. Checked here on their own, network off and capabilities
//! dropped as the server runs containers, before simulation jobs use them.

use crate::support::{docker, simulation_image, verilator_image};

/// Runs `script` in `image` as the server would run a job, in /project after writing `files`
/// there; returns whether it passed and what it printed (stdout and stderr).
fn run(image: &str, files: &[(&str, &str)], script: &str) -> (bool, String) {
    let mut setup = String::new();
    for (name, content) in files {
        setup.push_str(&format!("cat > {name} <<'EOF'\n{content}EOF\n"));
    }
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-w",
        "/project",
        image,
        "sh",
        "-c",
        &format!("{setup}{script}"),
    ]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

pub const COUNTER: &str = "module counter(input clk, output reg [3:0] q = 0);
  always @(posedge clk) q <= q + 1;
endmodule
";

/// A testbench of [`COUNTER`] that passes if it counts to `expected` in 10 time units (else
/// `$fatal`), writing its waveforms to `vcd`.
pub fn testbench_dumping_to(expected: u32, vcd: &str) -> String {
    format!(
        "module tb;
  reg clk = 0;
  wire [3:0] q;
  counter c(.clk(clk), .q(q));
  always #1 clk = ~clk;
  initial begin
    $dumpfile(\"{vcd}\");
    $dumpvars(0, tb);
    #10;
    if (q != {expected}) begin $display(\"FAIL q=%0d\", q); $fatal(1); end
    $display(\"PASS q=%0d\", q);
    $finish;
  end
endmodule
"
    )
}

fn testbench(expected: u32) -> String {
    testbench_dumping_to(expected, "tb.vcd")
}

const SIMULATE: &str = "iverilog -g2012 -s tb -o sim counter.v tb.v && vvp -n sim && ls -l tb.vcd";

#[test]
fn icarus_in_the_test_image_passes_fails_and_reports_syntax_errors() {
    let image = simulation_image();
    let (passed, printed) = run(
        image,
        &[("counter.v", COUNTER), ("tb.v", &testbench(5))],
        SIMULATE,
    );
    assert!(passed, "{printed}");
    assert!(printed.contains("PASS q=5"), "{printed}");
    assert!(printed.contains("tb.vcd"), "{printed}");

    let (passed, printed) = run(
        image,
        &[("counter.v", COUNTER), ("tb.v", &testbench(7))],
        SIMULATE,
    );
    assert!(!passed, "a failing testbench must fail: {printed}");
    assert!(printed.contains("FAIL q=5"), "{printed}");

    let broken = COUNTER.replace("endmodule", "endmodul");
    let (passed, printed) = run(
        image,
        &[("counter.v", &broken), ("tb.v", &testbench(5))],
        SIMULATE,
    );
    assert!(!passed, "a syntax error must fail: {printed}");
    assert!(
        printed.contains("counter.v"),
        "the compiler names the file: {printed}"
    );
    assert!(printed.to_lowercase().contains("syntax error"), "{printed}");
}

/// A Verilator simulation job's script, as the server runs it (`simulation_command` in
/// src/runner/simulation.rs): `sh -c SCRIPT sh TOP FILE...`. It holds no single quote.
const VERILATOR_JOB: &str = "top=$1; shift; verilator --binary --timing --trace -j 0 -I/project -Mdir /tmp/verilator --top-module \"$top\" -o simulation \"$@\" && exec /tmp/verilator/simulation";

#[test]
fn verilator_in_the_test_image_passes_and_fails() {
    // The job's exact command line, then a look at the VCD file the testbench dumps.
    let simulate = format!(
        "sh -c '{VERILATOR_JOB}' sh tb /project/counter.v /project/tb.v \
         && grep -l enddefinitions /project/tb.vcd"
    );
    let image = verilator_image();
    let (passed, printed) = run(
        image,
        &[("counter.v", COUNTER), ("tb.v", &testbench(5))],
        &simulate,
    );
    assert!(passed, "{printed}");
    assert!(printed.contains("PASS q=5"), "{printed}");
    assert!(printed.contains("/project/tb.vcd"), "{printed}");

    let (passed, printed) = run(
        image,
        &[("counter.v", COUNTER), ("tb.v", &testbench(7))],
        &simulate,
    );
    assert!(!passed, "a failing testbench must fail: {printed}");
    assert!(printed.contains("FAIL q=5"), "{printed}");
}
