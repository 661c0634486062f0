/** Shared type of the example modules. */
import type { UsageToPrice } from '../price-book.js';

/** A usage event an example book is meant to price (see the unit tests). */
export type ExampleEvent = UsageToPrice;
