// Package envflag gives command-line flags their defaults from environment
// variables (HUSH_*), so every hush binary can be configured either way.
//
// A malformed variable does not stop flag registration: it is remembered and
// reported by Err after parsing, next to any flag error, so the operator sees
// every bad setting at once.
package envflag

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Defaults reads flag defaults from the environment. The zero value is ready
// to use; it is not safe for concurrent use (flags are set up once, in main).
type Defaults struct{ errs []error }

// String returns $name, or def when it is unset.
func (d *Defaults) String(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// Duration returns $name parsed by time.ParseDuration, or def when unset.
func (d *Defaults) Duration(name string, def time.Duration) time.Duration {
	return parse(d, name, def, time.ParseDuration)
}

// Int returns $name as a decimal integer, or def when unset.
func (d *Defaults) Int(name string, def int) int {
	return parse(d, name, def, strconv.Atoi)
}

// Bool returns $name parsed by strconv.ParseBool, or def when unset.
func (d *Defaults) Bool(name string, def bool) bool {
	return parse(d, name, def, strconv.ParseBool)
}

// Err reports every malformed variable read so far, or nil.
func (d *Defaults) Err() error { return errors.Join(d.errs...) }

func parse[T any](d *Defaults, name string, def T, p func(string) (T, error)) T {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	x, err := p(v)
	if err != nil {
		d.errs = append(d.errs, fmt.Errorf("%s=%q: %w", name, v, err))
		return def
	}
	return x
}
