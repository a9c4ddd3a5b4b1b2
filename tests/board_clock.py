"""Events of an emulated board on its own clock (the clock of the stream's timestamps and of
the firmware's watchdog), for tests whose timing must not depend on the host's load."""

from __future__ import annotations

from waiting import wait_until


def record_pwm(emu) -> list[tuple[float, bool, float]]:
    """Record each ``pwm_set`` of the firmware as (board time [s] since boot, enabled, duty)."""
    calls: list[tuple[float, bool, float]] = []
    hal = emu.hal
    inner = hal.pwm_set

    def pwm_set(enabled: bool, freq_hz: float, duty: float, *limit: float | None) -> None:
        calls.append((hal.ticks_us() * 1e-6, bool(enabled), float(duty) if enabled else 0.0))
        inner(enabled, freq_hz, duty, *limit)

    hal.pwm_set = pwm_set
    return calls


def record_received(emu) -> list[float]:
    """Record the board time [s] of each serial read that brought bytes from the host."""
    times: list[float] = []
    hal = emu.hal
    inner = hal.serial_read

    def serial_read(timeout_us: int) -> bytes:
        data = inner(timeout_us)
        if data:
            times.append(hal.ticks_us() * 1e-6)
        return data

    hal.serial_read = serial_read
    return times


def watchdog_delay(pwm: list[tuple[float, bool, float]], received: list[float]) -> float:
    """Board time [s] from the host's last bytes to the output going off."""
    off = next(t for t, enabled, _ in reversed(pwm) if not enabled)
    return off - max(t for t in received if t <= off)


def assert_watchdog_trips(emu, pwm, received, timeout: float) -> None:
    """The output went off ``timeout`` s after the host's last bytes on the board's clock: not
    earlier (to a poll, 1 ms), and later only by the emulator's longest serve-loop gap (a
    busy host delays the poll that trips, as a stalled firmware would)."""
    # The trip turns the gate off in its tick (an emulator call may run that tick); the
    # firmware writes the PWM off when its next poll reports the trip.
    assert wait_until(lambda: not pwm[-1][1] and pwm[-1][0] >= max(received), 5.0)
    delay = watchdog_delay(pwm, received)
    late = emu.stats()["max_poll_gap"]
    assert timeout - 2e-3 <= delay <= timeout + late + 2e-3, (delay, late)
