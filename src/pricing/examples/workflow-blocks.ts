/**
 * Shape: credits per block run. A visual workflow builder where every node ("block") costs a
 * fixed number of credits per run, set per block type (sku); unknown blocks cost 1.
 * Amounts are illustrative.
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: FLAT per sku. */
export const workflowBlocksBook: PriceBookInput = {
  name: 'Workflow blocks',
  rules: [
    { category: 'block', kind: 'FLAT', credits: '1' },
    { category: 'block', sku: 'ai_completion', kind: 'FLAT', credits: '2' },
    { category: 'block', sku: 'web_scrape', kind: 'FLAT', credits: '3' },
    { category: 'block', sku: 'send_email', kind: 'FLAT', credits: '0.5' },
    { category: 'block', sku: 'if_condition', kind: 'FREE' },
    { category: 'block', tier: 'enterprise', sku: 'web_scrape', kind: 'FLAT', credits: '2' },
  ],
};

/** One scrape block run. */
export const workflowBlocksSample: ExampleEvent = {
  category: 'block',
  sku: 'web_scrape',
};
