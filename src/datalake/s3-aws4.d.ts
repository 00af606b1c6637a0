/**
 * Types for the part of the `aws4` package (SigV4 request signing, MIT) that
 * s3-datalake.ts uses; the package ships none.
 */
declare module 'aws4' {
  export interface Aws4Request {
    method?: string;
    host?: string;
    path?: string;
    service?: string;
    region?: string;
    headers?: Record<string, string>;
  }
  export interface Aws4Credentials {
    accessKeyId: string;
    secretAccessKey: string;
    sessionToken?: string;
  }
  /** Adds X-Amz-Date, Authorization (and X-Amz-Security-Token) to a copy of request.headers. */
  export function sign<T extends Aws4Request>(request: T, credentials: Aws4Credentials): T & { headers: Record<string, string> };
  const aws4: { sign: typeof sign };
  export default aws4;
}
