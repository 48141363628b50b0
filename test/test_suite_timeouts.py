"""pytest.ini's global timeout must not silently cut a test short: a test that gives a subprocess
(or a wait) a literal timeout longer than the global one carries its own, longer,
``@pytest.mark.timeout``."""
import ast
import configparser
from pathlib import Path

TEST_ROOT = Path(__file__).resolve().parent
TIMEOUT_KEYWORDS = ("timeout", "timeout_s")


def _global_timeout() -> int:
    parser = configparser.ConfigParser()
    parser.read(TEST_ROOT / "pytest.ini")
    return int(parser["pytest"]["timeout"])


def _own_timeout(function: ast.FunctionDef) -> int | None:
    for decorator in function.decorator_list:
        if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "timeout" and decorator.args
                and isinstance(decorator.args[0], ast.Constant)):
            return int(decorator.args[0].value)
    return None


def _longest_literal_timeout(function: ast.FunctionDef) -> int:
    longest = 0
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if (keyword.arg in TIMEOUT_KEYWORDS and isinstance(keyword.value, ast.Constant)
                        and isinstance(keyword.value.value, (int, float))):
                    longest = max(longest, int(keyword.value.value))
    return longest


def test_every_long_wait_has_its_own_pytest_timeout() -> None:
    cap = _global_timeout()
    offenders = []
    for path in sorted(TEST_ROOT.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")):
            longest = _longest_literal_timeout(function)
            if longest < cap:
                continue
            own = _own_timeout(function)
            if own is None or own <= longest:
                offenders.append(f"{path.relative_to(TEST_ROOT)}::{function.name} waits up to {longest} s "
                                 f"with pytest timeout {own or cap} s")
    assert not offenders, "add @pytest.mark.timeout(N) above these tests:\n" + "\n".join(offenders)
