package envflag

import (
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	t.Setenv("HUSH_T_STR", "x")
	t.Setenv("HUSH_T_DUR", "3s")
	t.Setenv("HUSH_T_INT", "7")
	t.Setenv("HUSH_T_BOOL", "true")
	var d Defaults
	if got := d.String("HUSH_T_STR", "def"); got != "x" {
		t.Errorf("String = %q", got)
	}
	if got := d.String("HUSH_T_UNSET", "def"); got != "def" {
		t.Errorf("unset String = %q", got)
	}
	if got := d.Duration("HUSH_T_DUR", time.Second); got != 3*time.Second {
		t.Errorf("Duration = %v", got)
	}
	if got := d.Int("HUSH_T_INT", 1); got != 7 {
		t.Errorf("Int = %d", got)
	}
	if got := d.Bool("HUSH_T_BOOL", false); !got {
		t.Error("Bool = false")
	}
	if err := d.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
}

func TestMalformedValuesAreAllReported(t *testing.T) {
	t.Setenv("HUSH_T_DUR", "soon")
	t.Setenv("HUSH_T_INT", "many")
	var d Defaults
	if got := d.Duration("HUSH_T_DUR", time.Second); got != time.Second {
		t.Errorf("malformed Duration gave %v, want the default", got)
	}
	d.Int("HUSH_T_INT", 1)
	err := d.Err()
	if err == nil || !strings.Contains(err.Error(), `HUSH_T_DUR="soon"`) || !strings.Contains(err.Error(), `HUSH_T_INT="many"`) {
		t.Fatalf("Err = %v, want both variables named", err)
	}
}
