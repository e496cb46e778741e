"""Device health from the real /proc of this machine, and from a Jetson-like sysfs tree."""

import json
import os

from agent import health
from agent.publish import schema


def test_read_health_on_this_machine():
    health._last_cpu.clear()  # the first reading is the average since boot: always defined
    payload = health.read_health()
    json.dumps(payload, allow_nan=False)
    published = schema.health("dev", payload, {"cam0": "running"})
    assert published["schema_version"] == schema.SCHEMA_VERSION and published["device_id"] == "dev"
    assert payload["memory"]["total_mb"] > 0
    assert 0 <= payload["memory"]["used_percent"] <= 100
    assert len(payload["load_average"]) == 3
    assert 0 <= payload["cpu_percent"] <= 100  # first call: since boot, always available


def _write(root, path, text):
    full = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text + "\n")


def test_jetson_sysfs_tree(tmp_path):
    root = str(tmp_path)
    _write(root, "/etc/nv_tegra_release", "# R32 (release), REVISION: 6.1")
    _write(root, "/sys/class/thermal/thermal_zone0/type", "CPU-therm")
    _write(root, "/sys/class/thermal/thermal_zone0/temp", "41500")
    _write(root, "/sys/class/thermal/thermal_zone1/type", "GPU-therm")
    _write(root, "/sys/class/thermal/thermal_zone1/temp", "39000")
    _write(root, "/sys/devices/gpu.0/load", "537")
    dev = "/sys/bus/i2c/drivers/ina3221x/7-0040/iio:device0"
    _write(root, dev + "/rail_name_0", "VDD_IN")
    _write(root, dev + "/in_power0_input", "4123")
    _write(root, dev + "/in_voltage0_input", "5000")
    _write(root, dev + "/in_current0_input", "824")
    payload = health.read_health(root)
    assert payload["jetson"] is True
    assert payload["temperatures_c"] == {"CPU-therm": 41.5, "GPU-therm": 39.0}
    assert payload["gpu_load_percent"] == 53.7
    assert payload["power"]["VDD_IN"]["mw"] == 4123.0
    assert "memory" not in payload  # no /proc/meminfo under this root: left out, not guessed


def test_missing_everything(tmp_path):
    payload = health.read_health(str(tmp_path))
    assert payload["jetson"] is False
    assert set(payload) == {"hostname", "jetson"}
