package tui

import (
	"fmt"
	"strings"

	"charm.land/lipgloss/v2"
	qrcode "github.com/skip2/go-qrcode"
)

// qrQuiet is the quiet zone drawn around the code, in modules. The spec
// asks for four; two keeps the code small and scanners read it, since the
// code is drawn dark on light whatever the terminal's colours.
const qrQuiet = 2

// qrLines renders data as a QR code with half-block characters: each
// text row holds two module rows (upper half ▀, lower half ▄, both █),
// drawn black on white.
func qrLines(data []byte) ([]string, error) {
	q, err := qrcode.New(string(data), qrcode.Low)
	if err != nil {
		return nil, fmt.Errorf("qr code: %w", err)
	}
	q.DisableBorder = true
	bm := q.Bitmap() // true = dark module
	n := len(bm)
	size := n + 2*qrQuiet
	dark := func(x, y int) bool {
		x, y = x-qrQuiet, y-qrQuiet
		return x >= 0 && y >= 0 && x < n && y < n && bm[y][x]
	}
	style := lipgloss.NewStyle().Foreground(lipgloss.Color("#000000")).Background(lipgloss.Color("#ffffff"))
	var out []string
	for y := 0; y < size; y += 2 {
		var b strings.Builder
		for x := 0; x < size; x++ {
			top, bottom := dark(x, y), y+1 < size && dark(x, y+1)
			switch {
			case top && bottom:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bottom:
				b.WriteString("▄")
			default:
				b.WriteString(" ")
			}
		}
		out = append(out, style.Render(b.String()))
	}
	return out, nil
}
