"""Device health: temperatures, load, memory, power and GPU load from /proc and /sys.

Every reader tolerates missing or unreadable files (containers, other boards):
a value it cannot read is left out, never guessed. Jetson specifics (GPU load,
INA3221 power rails, EMC/GPU clocks) appear only where their sysfs files exist.
"""

import glob
import os
import socket

# Jetson sysfs: Xavier NX / L4T 32.x and 35.x paths (each checked, none assumed).
GPU_LOAD_FILES = ("/sys/devices/gpu.0/load", "/sys/devices/platform/gpu.0/load")
GPU_FREQ_GLOBS = ("/sys/devices/gpu.0/devfreq/*/cur_freq", "/sys/devices/17000000.gv11b/devfreq/*/cur_freq",
                  "/sys/devices/platform/gpu.0/devfreq/*/cur_freq")
INA3221_GLOBS = ("/sys/bus/i2c/drivers/ina3221x/*/iio:device*",  # L4T 32.x
                 "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")  # L4T 35.x
JETSON_RELEASE_FILE = "/etc/nv_tegra_release"

_last_cpu = {}


def _read(path, root=""):
    try:
        with open(root + path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def temperatures(root=""):
    """{zone type: degrees C} from the thermal zones (millidegrees in sysfs)."""
    out = {}
    zones = sorted(glob.glob(root + "/sys/class/thermal/thermal_zone*")) or sorted(
        glob.glob(root + "/sys/devices/virtual/thermal/thermal_zone*"))
    for zone in zones:
        milli = _number(_read(zone + "/temp"))
        if milli is None:
            continue
        name = _read(zone + "/type") or os.path.basename(zone)
        key, n = name, 1
        while key in out:  # several zones can share a type
            n += 1
            key = "{}_{}".format(name, n)
        out[key] = round(milli / 1000.0, 1)
    return out


def load_average(root=""):
    """(1, 5, 15)-minute load averages, or None."""
    text = _read("/proc/loadavg", root)
    if not text:
        return None
    parts = text.split()
    values = [_number(p) for p in parts[:3]]
    return None if None in values else values


def _cpu_times(root=""):
    text = _read("/proc/stat", root)
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            return sum(values[:8]), idle
    return None


def cpu_percent(root=""):
    """CPU busy % since the previous call (first call: since boot), or None."""
    now = _cpu_times(root)
    if now is None:
        return None
    total, idle = now
    prev_total, prev_idle = _last_cpu.get(root, (0, 0))
    _last_cpu[root] = now
    d_total, d_idle = total - prev_total, idle - prev_idle
    if d_total <= 0:
        return None
    return round(100.0 * (d_total - d_idle) / d_total, 1)


def memory(root=""):
    """{'total_mb', 'available_mb', 'used_percent'} from /proc/meminfo, or None."""
    text = _read("/proc/meminfo", root)
    if not text:
        return None
    info = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        value = _number(rest.split()[0]) if rest.split() else None
        if value is not None:
            info[name] = value  # kB
    total = info.get("MemTotal")
    avail = info.get("MemAvailable", info.get("MemFree"))
    if not total or avail is None:
        return None
    return {"total_mb": round(total / 1024.0, 1), "available_mb": round(avail / 1024.0, 1),
            "used_percent": round(100.0 * (total - avail) / total, 1)}


def gpu_load(root=""):
    """Jetson GPU load in % (sysfs reports per mille), or None."""
    for path in GPU_LOAD_FILES:
        value = _number(_read(path, root))
        if value is not None:
            return round(value / 10.0, 1)
    return None


def gpu_freq_mhz(root=""):
    for pattern in GPU_FREQ_GLOBS:
        for path in sorted(glob.glob(root + pattern)):
            value = _number(_read(path))
            if value is not None:
                return round(value / 1e6, 1)
    return None


def cpu_freq_mhz(root=""):
    """{cpuN: MHz} from cpufreq, or {}."""
    out = {}
    for path in sorted(glob.glob(root + "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")):
        value = _number(_read(path))
        if value is not None:
            out[path.split("/")[-3]] = round(value / 1000.0, 1)  # kHz
    return out


def power_rails(root=""):
    """{rail: {'mw', 'mv', 'ma'}} from the INA3221 monitors of a Jetson, or {}."""
    rails = {}
    for pattern in INA3221_GLOBS:
        for dev in sorted(glob.glob(root + pattern)):
            # L4T 32.x: rail_name_N, in_power{N}_input (mW), in_voltage{N}_input (mV).
            for name_file in sorted(glob.glob(dev + "/rail_name_*")):
                idx = name_file.rsplit("_", 1)[1]
                name = _read(name_file)
                mw = _number(_read("{}/in_power{}_input".format(dev, idx)))
                if name and mw is not None:
                    rails[name] = {"mw": mw, "mv": _number(_read("{}/in_voltage{}_input".format(dev, idx))),
                                   "ma": _number(_read("{}/in_current{}_input".format(dev, idx)))}
            # L4T 35.x hwmon: inN_label, inN_input (mV), currN_input (mA).
            for label_file in sorted(glob.glob(dev + "/in[0-9]_label")):
                idx = os.path.basename(label_file)[2:].split("_")[0]
                name = _read(label_file)
                mv = _number(_read("{}/in{}_input".format(dev, idx)))
                ma = _number(_read("{}/curr{}_input".format(dev, idx)))
                if name and mv is not None and ma is not None and "sum" not in name.lower():
                    rails[name] = {"mw": round(mv * ma / 1000.0, 1), "mv": mv, "ma": ma}
    return rails


def is_jetson(root=""):
    return os.path.exists(root + JETSON_RELEASE_FILE)


def read_health(root=""):
    """This machine's health readings (JSON-ready; ``publish.schema.health`` makes the payload); never raises."""
    payload = {"hostname": socket.gethostname(), "jetson": is_jetson(root)}
    readers = (("temperatures_c", temperatures), ("load_average", load_average), ("cpu_percent", cpu_percent),
               ("memory", memory), ("cpu_freq_mhz", cpu_freq_mhz), ("gpu_load_percent", gpu_load),
               ("gpu_freq_mhz", gpu_freq_mhz), ("power", power_rails))
    for key, reader in readers:
        try:
            value = reader(root)
        except Exception:  # a strange board must not take the agent down
            value = None
        if value not in (None, {}, []):
            payload[key] = value
    return payload
