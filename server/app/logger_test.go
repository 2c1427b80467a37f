package app

import (
	"bytes"
	"strings"
	"testing"
)

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger("warn", "json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) || !strings.Contains(out, `"k":1`) {
		t.Errorf("warn/json logger wrote %q", out)
	}
	buf.Reset()
	if log, err = NewLogger("debug", "text", &buf); err != nil {
		t.Fatal(err)
	}
	log.Debug("visible")
	if !strings.Contains(buf.String(), "level=DEBUG msg=visible") {
		t.Errorf("debug/text logger wrote %q", buf.String())
	}
	if _, err := NewLogger("loud", "text", &buf); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
	if _, err := NewLogger("info", "xml", &buf); err == nil || !strings.Contains(err.Error(), `--log-format "xml"`) {
		t.Errorf("bad format: %v", err)
	}
}
