package cli

import (
	"strings"
	"testing"
	"unicode"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/protocol"
)

// FuzzParseRequest: any line from listen --stdin is either refused with a
// usage error or yields a request perform can run as is.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"1","method":"send","to":"bob","text":"hi"}`,
		`{"id":"2","method":"send","group":"team","text":"hi all","quote":"00112233445566778899aabbccddeeff"}`,
		`{"id":"3","method":"read","to":"Bob"}`,
		`{"id":"4","method":"typing","group":"0011223344","started":true}`,
		`{"id":"5","method":"send","to":"bob","group":"x","text":"both"}`,
		`{"method":"nope"}`, `{"id":1}`, `[]`, `{} {}`, `{"id":"6","extra":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := parseRequest(line)
		if err != nil {
			if exitCode(err) != ExitUsage {
				t.Fatalf("parse error %v has exit code %d", err, exitCode(err))
			}
			return
		}
		switch r.Method {
		case "send", "read", "typing":
		default:
			t.Fatalf("accepted method %q", r.Method)
		}
		if (r.To == "") == (r.Group == "") {
			t.Fatalf("accepted to=%q group=%q", r.To, r.Group)
		}
		if r.To != "" {
			if err := protocol.ValidateAccountName(r.To); err != nil {
				t.Fatalf("accepted name %q: %v", r.To, err)
			}
		}
		if r.Method == "send" {
			if strings.TrimSpace(r.Text) == "" || len(r.Text) > protocol.MaxTextLen {
				t.Fatalf("accepted text of %d bytes", len(r.Text))
			}
			if r.Quote != "" {
				if _, err := client.ParseMessageID(r.Quote); err != nil {
					t.Fatalf("accepted quote %q", r.Quote)
				}
			}
		}
	})
}

// FuzzOneLine: text from others prints as exactly one line without
// control characters, and clean text is unchanged.
func FuzzOneLine(f *testing.F) {
	for _, s := range []string{"hello", "two\nlines", "\x1b[31mred\x1b[0m", "tab\there", "\u2028sep", "\x9bcsi", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := oneLine(s)
		for _, r := range out {
			if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == '\u2028' || r == '\u2029' {
				t.Fatalf("oneLine(%q) = %q keeps control character %U", s, out, r)
			}
		}
		clean := true
		for _, r := range s {
			if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
				clean = false
			}
		}
		if clean && out != s {
			t.Fatalf("oneLine changed clean text %q to %q", s, out)
		}
	})
}
