//! Token bucket arithmetic, as a GCRA over one 64-bit word.
//!
//! A bucket of capacity `burst` refilled at `rate` tokens per second is kept
//! as its *theoretical arrival time* (`tat`): the instant at which the
//! bucket would be full again. A packet at `now` conforms when
//! `max(tat, now) + interval - now <= tolerance`, with `interval = 1e9 /
//! rate` nanoseconds per token and `tolerance = interval * burst`; it then
//! moves `tat` to `max(tat, now) + interval`. A bucket starts full (`tat =
//! 0`), so a steady overload admits exactly `burst + rate * elapsed` packets.
//!
//! Keeping the whole state in one word lets the kernel update it with a
//! single compare-and-swap, so two CPUs metering one policy never lose an
//! update: one of them retries.

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Highest accepted rate: one token per nanosecond.
pub const MAX_RATE: u64 = NANOS_PER_SEC;
/// Highest accepted burst.
pub const MAX_BURST: u64 = 1_000_000_000;

/// Nanoseconds per token for `rate` tokens per second, rounded to nearest.
///
/// `rate` must be in `1..=MAX_RATE`; the rounding error is below 0.01 % up
/// to 100,000 tokens per second and below 1 % up to 10 million.
pub const fn interval_ns(rate: u64) -> u64 {
    if rate == 0 {
        return NANOS_PER_SEC;
    }
    let i = (NANOS_PER_SEC + rate / 2) / rate;
    if i == 0 {
        1
    } else {
        i
    }
}

/// How far `tat` may run ahead of now for `burst` tokens.
pub const fn tolerance_ns(interval: u64, burst: u64) -> u64 {
    interval.saturating_mul(burst)
}

/// The new `tat` if a packet at `now` conforms, or `None` to drop it.
#[inline(always)]
pub const fn conform(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let base = if tat > now { tat } else { now };
    let next = base.saturating_add(interval);
    if next - now > tolerance {
        None
    } else {
        Some(next)
    }
}

/// Whole tokens available at `now`.
pub const fn tokens(tat: u64, now: u64, interval: u64, tolerance: u64) -> u64 {
    let ahead = tat.saturating_sub(now);
    if ahead >= tolerance || interval == 0 {
        0
    } else {
        (tolerance - ahead) / interval
    }
}

/// The `tat` that keeps a bucket's current tokens, capped at the new burst,
/// when its parameters change from `(interval, tolerance)` to
/// `(new_interval, new_tolerance)`.
pub const fn retune(
    tat: u64,
    now: u64,
    interval: u64,
    tolerance: u64,
    new_interval: u64,
    new_burst: u64,
) -> u64 {
    let mut keep = tokens(tat, now, interval, tolerance);
    if keep > new_burst {
        keep = new_burst;
    }
    // tat' = now + (burst' - tokens) * interval', so that tokens(tat') == keep.
    now.saturating_add((new_burst - keep).saturating_mul(new_interval))
}

/// Slack the tick clock needs, in ticks; see [`tick_clock_min_ns`].
pub const TICK_CLOCK_MIN_TICKS: u64 = 4;

/// The smallest `interval + tolerance` that the data plane meters with the
/// tick clock (jiffies times the tick length) for ticks of `tick_ns`;
/// `u64::MAX` (the precise clock for every bucket) when the tick is unknown.
///
/// The tick clock stands still for a tick and then jumps, so a bucket under
/// steady overload is handed a tick's worth of credit at once. It keeps all
/// of it when `interval + tolerance` spans at least a tick, and then admits
/// exactly what the precise clock would over any stretch longer than a tick;
/// a narrower bucket loses the excess and admits less than its rate. Four
/// ticks leave room for a tick that comes late. Typical policies (a burst of
/// a few milliseconds' worth of tokens or more) qualify; high-rate policies
/// with tiny bursts keep the precise clock.
pub const fn tick_clock_min_ns(tick_ns: u64) -> u64 {
    if tick_ns == 0 {
        u64::MAX
    } else {
        tick_ns.saturating_mul(TICK_CLOCK_MIN_TICKS)
    }
}

/// Whether the data plane meters a bucket of `interval` and `tolerance`
/// with the tick clock, given [`tick_clock_min_ns`]'s answer for the tick.
#[inline(always)]
pub const fn on_tick_clock(interval: u64, tolerance: u64, tick_clock_min_ns: u64) -> bool {
    interval.saturating_add(tolerance) >= tick_clock_min_ns
}

/// `now` rounded down to the tick clock's grid: the time the data plane's
/// tick clock, `jiffies * tick_ns + offset`, shows during the tick that
/// contains `now`. `offset` is the data plane's measured offset, usually a
/// "negative" (wrapped) number.
pub const fn tick_floor(now: u64, offset: u64, tick_ns: u64) -> u64 {
    if tick_ns == 0 {
        return now;
    }
    (now.wrapping_sub(offset) / tick_ns * tick_ns).wrapping_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers one packet every `gap` ns for `duration` ns; returns admissions.
    #[test]
    fn overload_admits_burst_plus_rate_times_time() {
        // rate, burst, offered gap: 10x the rate, 10 s.
        for (rate, burst) in [(100, 500), (1000, 1), (7, 3), (200, 0), (50_000, 100)] {
            let got = offer(rate, burst, 0);
            let want = if burst == 0 { 0 } else { burst + rate * 10 };
            let err = got.abs_diff(want);
            assert!(err <= 1 + want / 10_000, "rate {rate} burst {burst}: {got} vs {want}");
        }
    }

    /// Admitted packets under a 10x overload for 10 s when `now` is read
    /// from a clock that advances in steps of `tick` (0: the precise clock).
    fn offer(rate: u64, burst: u64, tick: u64) -> u64 {
        let (i, t) = (interval_ns(rate), tolerance_ns(interval_ns(rate), burst));
        let (mut tat, mut admitted) = (0u64, 0u64);
        let start = 1_000 * NANOS_PER_SEC;
        let gap = (NANOS_PER_SEC / rate / 10).max(1);
        let mut real = start;
        while real < start + 10 * NANOS_PER_SEC {
            let now = real.checked_div(tick).map_or(real, |q| q * tick);
            if let Some(next) = conform(tat, now, i, t) {
                tat = next;
                admitted += 1;
            }
            real += gap;
        }
        admitted
    }

    #[test]
    fn the_tick_clock_admits_what_the_precise_clock_does_where_it_is_used() {
        let tick = 4_000_000; // HZ=250
        let min = tick_clock_min_ns(tick);
        let mut used = 0;
        for (rate, burst) in
            [(200, 100), (1000, 20), (10_000, 200), (100_000, 2000), (7, 0), (50, 1), (1000, 4)]
        {
            let i = interval_ns(rate);
            if !on_tick_clock(i, tolerance_ns(i, burst), min) {
                continue;
            }
            used += 1;
            let (precise, ticked) = (offer(rate, burst, 0), offer(rate, burst, tick));
            // At most one tick's worth of tokens apart, at the end of the run.
            let slack = rate * tick / NANOS_PER_SEC + 1;
            assert!(
                precise.abs_diff(ticked) <= slack,
                "rate {rate} burst {burst}: {ticked} vs {precise}"
            );
        }
        assert_eq!(used, 6, "the cases above must exercise the tick clock");
    }

    #[test]
    fn tick_floor_finds_the_start_of_the_tick_on_the_data_planes_grid() {
        let tick = 4_000_000;
        // jiffies start near 2^32 - 300 * HZ, far ahead of CLOCK_MONOTONIC,
        // so the offset wraps.
        let offset = 1_000_000_007u64.wrapping_sub(4_294_892_296 * tick);
        let start = 4_294_900_000u64.wrapping_mul(tick).wrapping_add(offset);
        assert_eq!(tick_floor(start, offset, tick), start);
        assert_eq!(tick_floor(start + tick - 1, offset, tick), start);
        assert_eq!(tick_floor(start + tick, offset, tick), start + tick);
        assert_eq!(tick_floor(start + 5, offset, 0), start + 5);
    }

    #[test]
    fn buckets_narrower_than_a_tick_need_the_precise_clock() {
        // 100k/s with a burst of 10: interval + tolerance is 0.11 ms, far
        // below a 4 ms tick. On the tick clock it would get 11 packets per
        // tick, a tenth of its rate; this is why such buckets keep ktime.
        let (rate, burst, tick) = (100_000, 10, 4_000_000);
        let i = interval_ns(rate);
        assert!(!on_tick_clock(i, tolerance_ns(i, burst), tick_clock_min_ns(tick)));
        assert!(offer(rate, burst, tick) < offer(rate, burst, 0) / 5);
        assert_eq!(tick_clock_min_ns(0), u64::MAX);
    }

    #[test]
    fn a_full_bucket_admits_exactly_burst_at_once() {
        let (i, t) = (interval_ns(100), tolerance_ns(interval_ns(100), 5));
        let mut tat = 0;
        let now = 5 * NANOS_PER_SEC;
        let admitted = (0..10).filter(|_| conform(tat, now, i, t).map(|n| tat = n).is_some());
        assert_eq!(admitted.count(), 5);
    }

    #[test]
    fn retune_keeps_tokens_clamped_to_the_new_burst() {
        let now = 10 * NANOS_PER_SEC;
        let (i, t) = (interval_ns(10), tolerance_ns(interval_ns(10), 100));
        // Full bucket of 100, shrunk to 20: 20 tokens remain.
        let tat = retune(0, now, i, t, interval_ns(10), 20);
        assert_eq!(tokens(tat, now, i, tolerance_ns(i, 20)), 20);
        // 30 of 100 tokens used, burst grown to 1000: still 70, not topped up.
        let used = now + 30 * i;
        let tat = retune(used, now, i, t, i, 1000);
        assert_eq!(tokens(tat, now, i, tolerance_ns(i, 1000)), 70);
    }

    #[test]
    fn interval_rounds_to_nearest_and_never_reaches_zero() {
        assert_eq!(interval_ns(1), NANOS_PER_SEC);
        assert_eq!(interval_ns(3), 333_333_333);
        assert_eq!(interval_ns(2_000_000_000), 1);
        assert_eq!(interval_ns(MAX_RATE), 1);
    }
}
