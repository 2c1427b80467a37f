package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSendAndSaveFile: `hush send --file` to an account and a group,
// `hush receive --json` shows the file's fields (and no key material),
// `hush save` verifies and writes it, refuses to overwrite, and refuses a
// tampered file leaving nothing behind.
func TestSendAndSaveFile(t *testing.T) {
	ts := startServer(t)
	alice, bob := register(t, ts, "alice"), register(t, ts, "bob")
	dir := t.TempDir()

	content := make([]byte, 300<<10)
	rand.Read(content)
	copy(content[1000:], "PLAINTEXT-MARKER-CLI")
	doc := filepath.Join(dir, "report.pdf")
	if err := os.WriteFile(doc, content, 0o600); err != nil {
		t.Fatal(err)
	}
	r := alice.must("send", "--file", doc, "bob", "the", "report")
	id := strings.TrimSpace(r.stdout)
	if !hexID.MatchString(id) || r.stderr != "" {
		t.Fatalf("send --file: %+v", r)
	}

	ls := bob.receiveUntil("the file", hasText("alice", "the report"))
	m := ofType(ls, "message", "id", id)
	if len(m) != 1 || m[0]["kind"] != "attachment" {
		t.Fatalf("message line: %v", ls)
	}
	at, _ := m[0]["attachment"].(map[string]any)
	if at["id"] != id || at["name"] != "report.pdf" || at["size"] != float64(len(content)) ||
		at["content_type"] != "application/pdf" || at["caption"] != "the report" {
		t.Fatalf("attachment fields: %v", at)
	}
	for _, k := range []string{"key", "digest", "object_key", "thumbnail"} {
		if _, ok := at[k]; ok {
			t.Fatalf("the event line carries %q: %v", k, at)
		}
	}

	// Save to a named file, then into a directory under the sender's
	// name, then as JSON; an existing file needs --force.
	out := filepath.Join(t.TempDir(), "saved.pdf")
	r = bob.must("save", id, "--out", out)
	if strings.TrimSpace(r.stdout) != out || r.stderr != "" {
		t.Fatalf("save: %+v", r)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, content) {
		t.Fatal("the saved file differs from the sent one")
	}
	r = bob.run("save", "--out", out, id)
	if r.code != ExitFailed || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("save over an existing file: %+v", r)
	}
	bob.must("save", "--force", "--out", out, id)
	saveDir := t.TempDir()
	t.Chdir(saveDir)
	r = bob.must("save", "--json", "alice/"+id)
	var js map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || js["path"] != "report.pdf" || js["id"] != id ||
		js["size"] != float64(len(content)) || js["content_type"] != "application/pdf" {
		t.Fatalf("save --json: %q, %v", r.stdout, err)
	}
	if got, _ := os.ReadFile(filepath.Join(saveDir, "report.pdf")); !bytes.Equal(got, content) {
		t.Fatal("the file saved into the current directory differs")
	}

	// The server holds ciphertext only; flip a byte and save refuses it.
	objs := storedObjects(t, ts)
	if len(objs) != 1 {
		t.Fatalf("%d objects stored", len(objs))
	}
	b, _ := os.ReadFile(objs[0])
	if bytes.Contains(b, []byte("PLAINTEXT-MARKER-CLI")) {
		t.Fatal("the stored object holds plaintext")
	}
	b[len(b)-40] ^= 1
	os.WriteFile(objs[0], b, 0o600)
	empty := t.TempDir()
	r = bob.run("save", "--out", empty, id)
	if r.code != ExitFailed || !strings.Contains(r.stderr, "failed verification") || !strings.Contains(r.stderr, "report.pdf") {
		t.Fatalf("save a tampered file: %+v", r)
	}
	if es, _ := os.ReadDir(empty); len(es) != 0 {
		t.Fatalf("a refused file left %v behind", es)
	}

	// Usage errors and unknown ids.
	for _, args := range [][]string{
		{"save"}, {"save", "not-an-id"}, {"save", id, "extra"},
		{"send", "--file", filepath.Join(dir, "missing"), "bob"},
		{"send", "--file", dir, "bob"},
	} {
		if r := bob.run(args...); r.code != ExitUsage {
			t.Errorf("hush %v: %+v, want exit %d", args, r, ExitUsage)
		}
	}
	if r := bob.run("save", strings.Repeat("ab", 16)); r.code != ExitFailed || !strings.Contains(r.stderr, "no such message") {
		t.Fatalf("save an unknown id: %+v", r)
	}
	tid := alice.send("bob", "plain text")
	bob.receiveUntil("text", hasText("alice", "plain text"))
	if r := bob.run("save", tid); r.code != ExitFailed || !strings.Contains(r.stderr, "no attachment") {
		t.Fatalf("save a text message: %+v", r)
	}
}

// TestSendFileToGroup: an image to a group carries its dimensions, and
// every member saves the same bytes from the one upload.
func TestSendFileToGroup(t *testing.T) {
	ts := startServer(t)
	alice, bob, carol := register(t, ts, "alice"), register(t, ts, "bob"), register(t, ts, "carol")
	gid := strings.TrimSpace(alice.must("group", "create", "team", "--members", "bob,carol").stdout)
	for _, u := range []*user{bob, carol} {
		u.receiveUntil("group creation", func(ls []map[string]any) bool {
			return len(ofType(ls, "group_update", "group", gid)) > 0
		})
	}
	img := image.NewNRGBA(image.Rect(0, 0, 300, 200))
	for y := range 200 {
		for x := range 300 {
			img.Set(x, y, color.NRGBA{uint8(x), uint8(y), 50, 255})
		}
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	path := filepath.Join(t.TempDir(), "chart.png")
	os.WriteFile(path, buf.Bytes(), 0o600)

	id := alice.send("--group", "team", "--file", path)
	for _, u := range []*user{bob, carol} {
		ls := u.receiveUntil("group file", func(ls []map[string]any) bool { return len(ofType(ls, "message", "id", id)) > 0 })
		m := ofType(ls, "message", "id", id)[0]
		at, _ := m["attachment"].(map[string]any)
		if m["group"] != gid || at["content_type"] != "image/png" || at["width"] != float64(300) || at["height"] != float64(200) {
			t.Fatalf("%s: %v", u.name, m)
		}
		out := filepath.Join(t.TempDir(), "c.png")
		u.must("save", "--out", out, id)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, buf.Bytes()) {
			t.Fatalf("%s saved a different image", u.name)
		}
	}
	if n := len(storedObjects(t, ts)); n != 1 {
		t.Fatalf("the group file was stored %d times", n)
	}
	// The human form names the file and how to save it.
	alice.must("group", "rename", "team", "crew")
	h := bob.must("history", "--group", gid).stdout
	if !strings.Contains(h, `[file "chart.png"`) || !strings.Contains(h, "hush save "+id) {
		t.Fatalf("history: %s", h)
	}
}

// storedObjects lists the disk media backend's object files.
func storedObjects(t *testing.T, ts *testServer) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(ts.DataDir(), "media", "objects"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	})
	return out
}

// The progress line redraws in place, throttled, names the file without
// control characters, and ends with a newline.
func TestProgressLine(t *testing.T) {
	var b bytes.Buffer
	p := newProgressLine(&b, "uploading", "evil\x1b[2Jname.bin")
	p.update(0, 1000)
	p.update(1, 1000) // same percent: not redrawn
	time.Sleep(120 * time.Millisecond)
	p.update(500, 1000)
	p.update(1000, 1000)
	p.finish()
	p.finish()
	s := b.String()
	if strings.Contains(s, "\x1b[2J") || !strings.Contains(s, "evil[2Jname.bin") {
		t.Fatalf("progress output %q", s)
	}
	if strings.Count(s, "\r") != 3 || !strings.Contains(s, " 50% (500 B of 1000 B)") || !strings.HasSuffix(s, "100% (1000 B of 1000 B)\x1b[K\n") {
		t.Fatalf("progress output %q", s)
	}
	var nilLine *progressLine
	nilLine.finish() // not a terminal: nothing to end
}
