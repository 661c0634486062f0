import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  loadAzureTrace,
  loadMooncakeTrace,
  mergeTraces,
  parseAzureTimestamp,
  MOONCAKE_TRACE_START,
} from '../../src/trace/load.js';

const dir = join(import.meta.dirname, '../../data/traces');
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

describe('loadAzureTrace', () => {
  const conv = loadAzureTrace(join(dir, 'AzureLLMInferenceTrace_conv.csv'));
  const code = loadAzureTrace(join(dir, 'AzureLLMInferenceTrace_code.csv'));

  it('reads every row, including the last one without a line terminator', () => {
    expect(conv).toHaveLength(19_366);
    expect(code).toHaveLength(8_819);
    expect(conv.at(-1)).toEqual({
      occurredAt: new Date('2023-11-16T19:14:08.402Z'),
      inputTokens: 197,
      outputTokens: 183,
      cacheReadTokens: 0,
    });
    expect(code.at(-1)?.occurredAt.toISOString()).toBe('2023-11-16T19:14:19.928Z');
    expect(code.at(-1)?.outputTokens).toBe(173);
  });

  it('parses the first rows exactly, timestamps as UTC', () => {
    expect(conv[0]).toEqual({
      occurredAt: new Date('2023-11-16T18:15:46.680Z'),
      inputTokens: 374,
      outputTokens: 44,
      cacheReadTokens: 0,
    });
    expect(code[0]).toEqual({
      occurredAt: new Date('2023-11-16T18:17:03.979Z'),
      inputTokens: 4808,
      outputTokens: 10,
      cacheReadTokens: 0,
    });
  });

  it('matches the token totals of the data README', () => {
    expect(sum(conv.map((r) => r.inputTokens))).toBe(22_361_870);
    expect(sum(conv.map((r) => r.outputTokens))).toBe(4_088_665);
    expect(sum(code.map((r) => r.inputTokens))).toBe(18_059_974);
    expect(sum(code.map((r) => r.outputTokens))).toBe(245_896);
    expect(Math.min(...conv.map((r) => r.inputTokens))).toBe(2);
    expect(Math.max(...conv.map((r) => r.inputTokens))).toBe(14_050);
  });

  it('keeps rows sorted by time', () => {
    for (const t of [conv, code]) {
      for (let i = 1; i < t.length; i++) {
        expect(t[i]!.occurredAt.getTime()).toBeGreaterThanOrEqual(t[i - 1]!.occurredAt.getTime());
      }
    }
  });

  it('rejects a malformed row and names its line', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'trace-'));
    const p = join(tmp, 'bad.csv');
    writeFileSync(p, 'TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:50,x,1');
    expect(() => loadAzureTrace(p)).toThrow(/bad\.csv:3: ContextTokens/);
    writeFileSync(p, 'a,b,c\r\n');
    expect(() => loadAzureTrace(p)).toThrow(/expected header/);
  });
});

describe('parseAzureTimestamp', () => {
  it('truncates 7 fractional digits to milliseconds, UTC', () => {
    expect(parseAzureTimestamp('2023-11-16 18:15:46.6805900').toISOString()).toBe('2023-11-16T18:15:46.680Z');
    expect(parseAzureTimestamp('2023-11-16 18:15:46.9999999').toISOString()).toBe('2023-11-16T18:15:46.999Z');
    expect(parseAzureTimestamp('2023-11-16 18:15:46').toISOString()).toBe('2023-11-16T18:15:46.000Z');
  });
  it('rejects impossible dates and other formats', () => {
    expect(() => parseAzureTimestamp('2023-02-30 00:00:00.0')).toThrow(/impossible/);
    expect(() => parseAzureTimestamp('2023-11-16T18:15:46Z')).toThrow(/bad Azure timestamp/);
  });
});

describe('loadMooncakeTrace', () => {
  const moon = loadMooncakeTrace(join(dir, 'conversation_trace.jsonl'));

  it('reads every row with ms offsets from the fixed start', () => {
    expect(moon).toHaveLength(12_031);
    expect(moon[0]).toEqual({ occurredAt: MOONCAKE_TRACE_START, inputTokens: 6758, outputTokens: 500, cacheReadTokens: 0 });
    expect(moon[100]!.occurredAt.getTime() - MOONCAKE_TRACE_START.getTime()).toBe(36_000);
    expect(moon.at(-1)).toEqual({
      occurredAt: new Date(MOONCAKE_TRACE_START.getTime() + 3_536_999),
      inputTokens: 20_774,
      outputTokens: 508,
      cacheReadTokens: 512,
    });
  });

  it('counts leading already-seen prefix blocks as cache reads (37.4 % of input)', () => {
    // Row 1 shares only block 0 with row 0.
    expect(moon[1]!.cacheReadTokens).toBe(512);
    const input = sum(moon.map((r) => r.inputTokens));
    const cached = sum(moon.map((r) => r.cacheReadTokens));
    expect(input).toBe(144_793_823);
    expect(cached).toBe(54_098_411);
    expect(cached / input).toBeCloseTo(0.374, 3);
    expect(moon.every((r) => r.cacheReadTokens <= r.inputTokens)).toBe(true);
  });

  it('caps cache reads at input_length and honours a custom start', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'trace-'));
    const p = join(tmp, 't.jsonl');
    writeFileSync(
      p,
      '{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [7, 8]}\n' +
        '{"timestamp": 5, "input_length": 600, "output_length": 2, "hash_ids": [7, 8]}\n' +
        '{"timestamp": 9, "input_length": 1100, "output_length": 3, "hash_ids": [9, 7, 8]}\n',
    );
    const start = new Date('2030-01-01T00:00:00Z');
    const rows = loadMooncakeTrace(p, { start });
    expect(rows.map((r) => r.cacheReadTokens)).toEqual([0, 600, 0]);
    expect(rows[1]!.occurredAt.toISOString()).toBe('2030-01-01T00:00:00.005Z');
    writeFileSync(p, '{"timestamp": 0}\n');
    expect(() => loadMooncakeTrace(p)).toThrow(/t\.jsonl:1/);
  });
});

describe('mergeTraces', () => {
  it('merges conv and code into 28,185 requests in time order, tagged with their row', () => {
    const merged = mergeTraces({
      conv: loadAzureTrace(join(dir, 'AzureLLMInferenceTrace_conv.csv')),
      code: loadAzureTrace(join(dir, 'AzureLLMInferenceTrace_code.csv')),
    });
    expect(merged).toHaveLength(28_185);
    expect(merged[0]).toMatchObject({ trace: 'conv', row: 0, inputTokens: 374 });
    expect(merged.at(-1)).toMatchObject({ trace: 'code', row: 8818, inputTokens: 549 });
    expect(merged.filter((r) => r.trace === 'code')).toHaveLength(8_819);
    for (let i = 1; i < merged.length; i++) {
      expect(merged[i]!.occurredAt.getTime()).toBeGreaterThanOrEqual(merged[i - 1]!.occurredAt.getTime());
    }
  });
});
