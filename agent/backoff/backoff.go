// Package backoff computes reconnect delays with "full jitter" exponential
// backoff: the delay before attempt n is uniform in [0, min(cap, base·2^n)].
//
// Full jitter (rather than a fixed exponential schedule with a little noise)
// is what keeps a fleet of robots that lost the same control node at the same
// instant from coming back in synchronised waves: their retries spread evenly
// over the whole window.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy bounds the delays. The zero Policy is usable and means the defaults.
type Policy struct {
	Base time.Duration // ceiling of the first attempt's window; default DefaultBase
	Cap  time.Duration // no window grows beyond this; default DefaultCap
}

// Defaults used when a Policy field is zero.
const (
	DefaultBase = time.Second
	DefaultCap  = 60 * time.Second
)

func (p Policy) withDefaults() Policy {
	if p.Base <= 0 {
		p.Base = DefaultBase
	}
	if p.Cap <= 0 {
		p.Cap = DefaultCap
	}
	return p
}

// Max is the upper bound of the delay before attempt (counted from 0):
// min(Cap, Base·2^attempt), computed without overflow.
func (p Policy) Max(attempt int) time.Duration {
	p = p.withDefaults()
	if attempt < 0 {
		attempt = 0
	}
	d := p.Base
	for range attempt {
		if d >= p.Cap {
			break
		}
		d *= 2
	}
	return min(d, p.Cap)
}

// Delay draws the delay before attempt from [0, Max(attempt)] using rng.
func (p Policy) Delay(attempt int, rng *rand.Rand) time.Duration {
	return Uniform(p.Max(attempt), rng)
}

// Uniform draws a duration uniformly from [0, upTo]; 0 when upTo <= 0.
func Uniform(upTo time.Duration, rng *rand.Rand) time.Duration {
	if upTo <= 0 {
		return 0
	}
	return time.Duration(rng.Int64N(int64(upTo) + 1))
}
