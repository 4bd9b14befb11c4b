// The JSON forms of the types @grafana/schema generates from Grafana's CUE kinds, for
// infra/grafana/schema.py. A dashboard's JSON holds an enum member as its value ("value", not
// BigValueColorMode.Value), which a TypeScript string enum does not accept from a literal:
// `${E}` is the union of E's values. Numeric enums accept their values as they are.

/** T as JSON: string enums as their values, every property as optional or required as in T. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends readonly (infer Item)[]
    ? Json<Item>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

/** T as JSON with every property optional, at every depth: a panel's options and field config
 * set what differs from the plugin's defaults, and Grafana fills in the rest. What is set must
 * still be a property of T, of T's type. */
export type JsonPartial<T> = T extends string
  ? `${T}`
  : T extends readonly (infer Item)[]
    ? JsonPartial<Item>[]
    : T extends object
      ? { [K in keyof T]?: JsonPartial<T[K]> }
      : T;
