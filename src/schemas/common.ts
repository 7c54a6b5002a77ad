import { Type } from 'typebox'

/** RFC 9457 problem details, as every error of ours is answered. */
export const ProblemSchema = Type.Object({
  type: Type.String(),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.String(),
  errors: Type.Optional(Type.Array(Type.Object({
    pointer: Type.String({ description: 'JSON pointer into the request part named by location' }),
    detail: Type.String(),
    location: Type.Optional(Type.Union([Type.Literal('body'), Type.Literal('query'), Type.Literal('params'), Type.Literal('headers')]))
  })))
}, { $id: 'Problem', description: 'application/problem+json (RFC 9457)' })

/** Responses shared by every authenticated route. */
export const problem = (description: string) => ({ description, content: { 'application/problem+json': { schema: Type.Ref('Problem') } } })
