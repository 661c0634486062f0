import { describe, it, expect } from 'vitest';
import { llmQuantities, mix32, planReplay, showCredits } from '../../demo/plan.js';
import { CHAT_MODEL, CODE_MODEL, KIMI_MODEL } from '../../demo/price-book.js';

describe('planReplay (demo)', () => {
  const plan = planReplay('azure');

  it('plans the whole merged Azure trace: 28,185 requests, conv as the chat model, code as the code model', () => {
    expect(plan).toHaveLength(28_185);
    expect(plan.filter((p) => p.model === CHAT_MODEL)).toHaveLength(19_366);
    expect(plan.filter((p) => p.model === CODE_MODEL)).toHaveLength(8_819);
    expect(plan[0]).toMatchObject({ index: 0, trace: 'conv', row: 0, inputTokens: 374, outputTokens: 44, model: CHAT_MODEL });
  });

  it('is deterministic and spreads requests over 5 agents, 4 users and a few tasks', () => {
    expect(planReplay('azure', 500)).toEqual(plan.slice(0, 500));
    expect(new Set(plan.map((p) => p.agentId)).size).toBe(5);
    expect(new Set(plan.map((p) => p.userId)).size).toBe(4);
    expect(new Set(plan.map((p) => p.taskId)).size).toBe(6);
    const perAgent = new Map<string, number>();
    for (const p of plan) perAgent.set(p.agentId, (perAgent.get(p.agentId) ?? 0) + 1);
    for (const n of perAgent.values()) expect(n).toBeGreaterThan(3_000);
    // code requests only go to the coding agents
    expect(new Set(plan.filter((p) => p.trace === 'code').map((p) => p.agentId))).toEqual(new Set(['coding-agent', 'review-agent']));
  });

  it('sends 1 in 50 under a reservation (own task id), 1 in 200 twice, 1 in 10 single, the rest batched', () => {
    const count = (m: string) => plan.filter((p) => p.mode === m).length;
    expect(count('reservation')).toBe(564);
    expect(count('retry')).toBe(141);
    // index % 10 == 5 gives 2,818 requests; the 564 reservation slots (index % 50 == 25) are among them
    expect(count('single')).toBe(2_254);
    expect(count('batch') + count('single') + count('retry') + count('reservation')).toBe(28_185);
    for (const p of plan.filter((q) => q.mode === 'reservation')) expect(p.llmTaskId).toBe(`stream-${p.index}`);
    for (const p of plan.filter((q) => q.mode !== 'reservation')) expect(p.llmTaskId).toBe(p.taskId);
  });

  it('bills Mooncake as the Kimi model with cache reads moved out of the uncached input', () => {
    const moon = planReplay('mooncake', 3);
    expect(moon.map((p) => p.model)).toEqual([KIMI_MODEL, KIMI_MODEL, KIMI_MODEL]);
    expect(llmQuantities(moon[1]!, moon[1]!.outputTokens)).toEqual({ inputTokens: 7322 - 512, outputTokens: 490, cacheReadTokens: 512 });
    expect(llmQuantities(moon[0]!, 100)).toEqual({ inputTokens: 6758, outputTokens: 100 });
  });
});

describe('mix32 and showCredits', () => {
  it('mix32 is a stable 32-bit hash', () => {
    expect(mix32(0)).toBe(0);
    expect(mix32(1)).toBe(mix32(1));
    expect(mix32(1)).not.toBe(mix32(2));
    expect(mix32(123_456)).toBeLessThan(2 ** 32);
  });
  it('showCredits groups thousands and keeps every micro-credit digit', () => {
    expect(showCredits(1_378_999_864n * 1000n)).toBe('1,378,999.864');
    expect(showCredits(1_378_999_864n)).toBe('1,378.999864');
    expect(showCredits(-2_500_000n)).toBe('-2.5');
    expect(showCredits(0n)).toBe('0');
    expect(showCredits(136n)).toBe('0.000136');
  });
});
