"""Running the boostsim command in-process from tests."""

from boostsim.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command in this process: (exit status, stdout, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> str:
    """The single ``boostsim: error: ...`` line of ``err`` (asserts there is exactly one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("boostsim: error: "), err
    assert "Traceback" not in err
    return lines[0]
