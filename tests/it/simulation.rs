//! The simulation image the project tests use: a real Icarus Verilog from Debian's `iverilog`,
//! copied into a `FROM scratch` image. Checked here on its own, network off and capabilities
//! dropped as the server runs containers, before simulation jobs use it.

use crate::support::{docker, simulation_image};

/// Runs `script` in the simulation image as the server would run a job; returns whether it
/// passed and what it printed (stdout and stderr).
fn run(files: &[(&str, &str)], script: &str) -> (bool, String) {
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
        simulation_image(),
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

const COUNTER: &str = "module counter(input clk, output reg [3:0] q = 0);
  always @(posedge clk) q <= q + 1;
endmodule
";

fn testbench(expected: u32) -> String {
    format!(
        "module tb;
  reg clk = 0;
  wire [3:0] q;
  counter c(.clk(clk), .q(q));
  always #1 clk = ~clk;
  initial begin
    $dumpfile(\"tb.vcd\");
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

const SIMULATE: &str = "iverilog -g2012 -s tb -o sim counter.v tb.v && vvp -n sim && ls -l tb.vcd";

#[test]
fn icarus_in_the_test_image_passes_fails_and_reports_syntax_errors() {
    let (passed, printed) = run(&[("counter.v", COUNTER), ("tb.v", &testbench(5))], SIMULATE);
    assert!(passed, "{printed}");
    assert!(printed.contains("PASS q=5"), "{printed}");
    assert!(printed.contains("tb.vcd"), "{printed}");

    let (passed, printed) = run(&[("counter.v", COUNTER), ("tb.v", &testbench(7))], SIMULATE);
    assert!(!passed, "a failing testbench must fail: {printed}");
    assert!(printed.contains("FAIL q=5"), "{printed}");

    let broken = COUNTER.replace("endmodule", "endmodul");
    let (passed, printed) = run(&[("counter.v", &broken), ("tb.v", &testbench(5))], SIMULATE);
    assert!(!passed, "a syntax error must fail: {printed}");
    assert!(
        printed.contains("counter.v"),
        "the compiler names the file: {printed}"
    );
    assert!(printed.to_lowercase().contains("syntax error"), "{printed}");
}
