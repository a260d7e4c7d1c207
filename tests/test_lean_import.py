import subprocess
import sys


def test_import_bitstack_is_light():
    code = (
        "import sys, bitstack\n"
        "heavy = [m for m in ('torch', 'transformers', 'triton') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_using_the_api_does_not_import_triton():
    code = (
        "import sys, bitstack\n"
        "bitstack.load, bitstack.compress, bitstack.memory_bytes\n"
        "import torch\n"
        "print('triton' in sys.modules, torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"
