package tui

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hushchat/hush/client"
)

// TestFiles: /file sends a file (upload with progress), the receiver
// saves it with the save key and opens it with the open key; the bytes
// arrive intact.
func TestFiles(t *testing.T) {
	ts := startServer(t)
	ca, cb := newClient(t, ts, "alice"), newClient(t, ts, "bob")
	dir := t.TempDir()
	data := make([]byte, 300<<10)
	rand.Read(data)
	src := filepath.Join(dir, "photo of the cat.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	opened := filepath.Join(dir, "opened")
	a := newDriver(t, ca, Config{}, 80, 24)
	b := newDriver(t, cb, Config{OpenCommand: []string{"cp", "{path}", opened}}, 80, 24)

	a.newChat("bob")
	a.typeText("/file " + src)
	a.keys("enter")
	if len(a.m.transfers) != 1 || !a.m.transfers[0].up {
		t.Fatalf("no upload shown: %+v", a.m.transfers)
	}
	a.until("file message sent", func() bool {
		for _, m := range a.m.chat.msgs {
			if m.Kind == client.KindAttachment && m.Status >= client.StatusSent {
				return true
			}
		}
		return false
	})
	if len(a.m.transfers) != 0 {
		t.Fatal("the progress bar stays after the upload")
	}
	if !a.screenHas("[photo of the cat.bin] (300.0 kB)") {
		t.Fatalf("the file is not shown:\n%s", a.screen())
	}

	b.openFromList("alice")
	b.keys("esc")
	if sel := b.m.selectedMessage(); sel == nil || sel.Kind != client.KindAttachment {
		t.Fatalf("selected %+v", sel)
	}
	if !b.screenHas("s save · o open") {
		t.Fatalf("no file hint:\n%s", b.screen())
	}
	b.keys("s")
	sd, ok := b.m.dialog.(*formDialog)
	if !ok || !strings.HasSuffix(sd.fields[0].Value(), "photo of the cat.bin") {
		t.Fatalf("save dialog: %T %v", b.m.dialog, ok)
	}
	dest := filepath.Join(dir, "saved.bin")
	sd.fields[0].SetValue(dest)
	b.keys("enter")
	b.until("saved", func() bool { return strings.HasPrefix(b.m.flash, "saved ") })
	got, err := os.ReadFile(dest)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("saved file differs (%d bytes, %v)", len(got), err)
	}
	// Saving again to the same path is refused, not overwritten.
	b.keys("s")
	b.m.dialog.(*formDialog).fields[0].SetValue(dest)
	b.keys("enter")
	b.until("refused", func() bool { return b.m.flashErr && strings.Contains(b.m.flash, "exist") })

	b.keys("o")
	b.until("opened", func() bool { _, err := os.Stat(opened); return err == nil })
	if got, _ := os.ReadFile(opened); !bytes.Equal(got, data) {
		t.Fatal("opened file differs")
	}

	// A missing file is a clear error, nothing is sent.
	a.typeText("/file " + filepath.Join(dir, "nope"))
	a.keys("enter")
	if !a.m.flashErr || !strings.Contains(a.m.flash, "no such file") {
		t.Fatalf("flash = %q", a.m.flash)
	}
}
