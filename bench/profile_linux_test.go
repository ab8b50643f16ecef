// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A trace_stat/functionN as kernel/trace/ftrace.c prints it with the graph
// tracer: names cut to 30 characters, durations in us with three decimals
// below 10^7 us and none above.
const sampleFunctionStat = `  Function                               Hit    Time            Avg             s^2
  --------                               ---    ----            ---             ---
  upm_merge_range                          2    12345678 us     6172839 us      0.000 us    
  memcmp_pages                         16384    81920.500 us     5.000 us       1.250 us    
  split_huge_page_to_list_to_ord           3    900.000 us      300.000 us      4.000 us    
`

func TestParseFunctionStat(t *testing.T) {
	rows, err := parseFunctionStat(bufio.NewScanner(strings.NewReader(sampleFunctionStat)))
	require.NoError(t, err)
	require.Len(t, rows, 3)
	assert.Equal(t, functionTime{name: "upm_merge_range", calls: 2, ns: 12345678e3}, rows[0])
	assert.Equal(t, functionTime{name: "memcmp_pages", calls: 16384, ns: 81920.5e3}, rows[1])
	assert.Equal(t, "split_huge_page_to_list_to_order", fullFunctionName(rows[2].name))
	assert.Equal(t, "memcmp_pages", fullFunctionName(rows[1].name))

	_, err = parseFunctionStat(bufio.NewScanner(strings.NewReader("  f  x  1.0 us  1.0 us  0 us\n")))
	assert.Error(t, err, "a hit count that is no number")
	_, err = parseFunctionStat(bufio.NewScanner(strings.NewReader("  f  1  1.0 parsecs  1.0 us  0 us\n")))
	assert.Error(t, err, "a unit the kernel never prints")
}

func TestProfileTextShares(t *testing.T) {
	out := &profileText{}
	out.add("case", 100, []functionTime{{"upm_merge_range", 1, 2e6}, {"memcmp_pages", 300, 5e5}}, []string{"write_protect_page"})
	text := out.b.String()
	assert.Contains(t, text, "## case: 100 pages advised")
	assert.Contains(t, text, "| upm_merge_range | 1 | 2.0 | 2000.00 | 20000 | 100.0 |")
	assert.Contains(t, text, "| memcmp_pages | 300 | 0.5 | 1.67 | 5000 | 25.0 |")
	assert.Contains(t, text, "Not traceable (inlined or static): write_protect_page")
}
