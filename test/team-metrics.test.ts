import t from 'tap'
import { createTeamMetrics } from '../src/team/team-metrics.js'

t.test('the key label is the name, bounded: past the limit, keys are counted as other', async (t) => {
  const metrics = createTeamMetrics(2)
  for (const name of ['alice', 'bob', 'carol', 'dave', 'alice']) metrics.request(name, 200, { prompt: 3, completion: 4 })
  metrics.refusal('erin', 'model_not_allowed')
  const text = await metrics.registry.metrics()
  t.match(text, /toprouter_proxy_key_requests_total\{key="alice",status="200"\} 2/)
  t.match(text, /toprouter_proxy_key_requests_total\{key="bob",status="200"\} 1/)
  t.match(text, /toprouter_proxy_key_requests_total\{key="other",status="200"\} 2/, 'carol and dave')
  t.match(text, /toprouter_proxy_key_refusals_total\{key="other",code="model_not_allowed"\} 1/)
  t.match(text, /toprouter_proxy_key_tokens_total\{key="alice",kind="completion"\} 8/)
  t.notMatch(text, /carol|dave|erin/)
})
