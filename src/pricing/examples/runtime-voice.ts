/**
 * Shape: per-minute runtime and voice. An autonomous-agent platform billing sandbox runtime
 * per minute, and a voice-agent platform billing call time per minute with a premium voice
 * tier; both pro rata to the second. Amounts are illustrative.
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: PER_UNIT minutes / hours. */
export const runtimeVoiceBook: PriceBookInput = {
  name: 'Runtime and voice minutes',
  rules: [
    { category: 'runtime', kind: 'PER_UNIT', unit: 'minutes', credits: '1' },
    { category: 'runtime', tier: 'gpu', kind: 'PER_UNIT', unit: 'hours', credits: '300' },
    { category: 'voice', kind: 'PER_UNIT', unit: 'minutes', credits: '7' },
    { category: 'voice', tier: 'premium_voice', kind: 'PER_UNIT', unit: 'minutes', credits: '12' },
  ],
};

/** A 2 min 30 s phone call with the premium voice. */
export const runtimeVoiceSample: ExampleEvent = {
  category: 'voice',
  tier: 'premium_voice',
  quantities: { seconds: '150' },
};
